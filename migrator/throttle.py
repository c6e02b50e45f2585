"""Run-wide rate limits and backoff, shared by all workers of a run.

A Throttle is called once per FETCH/APPEND batch (Engine._copy_chunk) with the
batch's message count and bytes. Each limit is a virtual clock ("pay before"):
a batch of n units reserves n/rate seconds after the previous reservation and
the caller waits until its reservation is over, so a run never moves more than
rate x elapsed units (no burst credit). When a server answers [THROTTLED] or
[LIMIT], backoff() pauses every worker and halves the rates; each later batch
wins 5% back, so the run settles just below what the server tolerates.
"""

from __future__ import annotations

import threading
import time

RECOVERY = 1.05  # rate factor regained per batch after a backoff
MIN_FACTOR = 1 / 64
BACKOFF_CODES = ("[THROTTLED", "[LIMIT", "[UNAVAILABLE")


class Throttle:
    def __init__(self, bytes_per_second: float | None = None, messages_per_second: float | None = None,
                 clock=time.monotonic):
        for name, v in (("--max-bytes-per-second", bytes_per_second),
                        ("--max-messages-per-second", messages_per_second)):
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive")
        self.bytes_rate = bytes_per_second
        self.msgs_rate = messages_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._next_bytes = self._next_msgs = clock()
        self._pause_until = 0.0
        self._factor = 1.0
        self.backoffs = 0

    @property
    def limited(self) -> bool:
        return bool(self.bytes_rate or self.msgs_rate)

    def acquire(self, messages: int, nbytes: int, stop: threading.Event | None = None) -> bool:
        """Wait until this batch fits the limits; False if stop was set meanwhile."""
        with self._lock:
            now = self._clock()
            ready = max(now, self._pause_until)
            if self.msgs_rate:
                self._next_msgs = max(self._next_msgs, ready) + messages / (self.msgs_rate * self._factor)
                ready = max(ready, self._next_msgs)
            if self.bytes_rate:
                self._next_bytes = max(self._next_bytes, ready) + nbytes / (self.bytes_rate * self._factor)
                ready = max(ready, self._next_bytes)
            self._factor = min(1.0, self._factor * RECOVERY)
            wait = ready - now
        if wait <= 0:
            return True
        if stop is None:
            time.sleep(wait)
            return True
        return not stop.wait(wait)

    def backoff(self, reason: str, seconds: float = 2.0) -> bool:
        """React to an error text; True if it was a server asking us to slow down."""
        if not any(code in reason.upper() for code in BACKOFF_CODES):
            return False
        with self._lock:
            self.backoffs += 1
            self._factor = max(MIN_FACTOR, self._factor / 2)
            self._pause_until = max(self._pause_until, self._clock() + seconds * min(self.backoffs, 8))
        return True


def batch_limits(throttle: Throttle | None, batch_bytes: int, batch_count: int) -> tuple[int, int]:
    """Smaller batches under a low limit, so a run moves smoothly instead of in bursts."""
    if throttle is None:
        return batch_bytes, batch_count
    if throttle.msgs_rate:
        batch_count = max(1, min(batch_count, int(throttle.msgs_rate)))
    if throttle.bytes_rate:
        batch_bytes = max(64 * 1024, min(batch_bytes, int(throttle.bytes_rate)))
    return batch_bytes, batch_count


def connection_limits(src, dst, workers: int, max_per_host: int | None) -> int:
    """Apply --max-connections-per-host to both Connectors (slots of this run's own, see HostSlots);
    the number of workers that fits.

    A worker holds one source and one destination connection at once, so with both on
    the same host it needs two slots: more workers than slots would wait on each other.
    """
    if not max_per_host:
        return workers
    from migrator.errors import UsageError

    same_host = src.endpoint.host.lower() == dst.endpoint.host.lower()
    per_worker = 2 if same_host and src.endpoint.is_network and dst.endpoint.is_network else 1
    if max_per_host < per_worker:
        raise UsageError(f"--max-connections-per-host must be at least {per_worker} "
                         "(source and destination are on the same host)")
    from migrator.stores import HostSlots

    src.slots = dst.slots = HostSlots(max_per_host)
    return max(1, min(workers, max_per_host // per_worker))


FOLLOW_WATCHERS_UNCAPPED = 10  # source connections watching when --max-connections-per-host is not set


def follow_limits(src, dst, workers: int, max_per_host: int | None) -> tuple[int, int]:
    """--follow: (workers, watching connections) under --max-connections-per-host. The watching
    takes what the workers leave on the source's host; if they leave nothing, one worker less."""
    if not max_per_host:
        return workers, FOLLOW_WATCHERS_UNCAPPED
    from migrator.errors import UsageError

    same_host = src.endpoint.host.lower() == dst.endpoint.host.lower()
    per_worker = 2 if same_host and src.endpoint.is_network and dst.endpoint.is_network else 1
    while workers > 1 and max_per_host - workers * per_worker < 1:
        workers -= 1
    watchers = max_per_host - workers * per_worker
    if watchers < 1:
        raise UsageError(f"--max-connections-per-host must be at least {per_worker + 1} with --follow "
                         "(the workers' connections and one to watch the source)")
    return workers, watchers
