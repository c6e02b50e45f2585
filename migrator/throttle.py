"""Run-wide rate limits and backoff, shared by all workers of a run.

A Throttle is called once per FETCH/APPEND batch (Engine._copy_chunk) with the
batch's message count and bytes. Each limit is a virtual clock ("pay before"):
a batch of n units reserves n/rate seconds after the previous reservation and
the caller waits until its reservation is over, so a run never moves more than
rate x elapsed units (no burst credit). What a server says when it wants us to slow
down is read here too (is_throttle, suggested_wait); the pause that follows is the
Governor's (governor.py), per host.
"""

from __future__ import annotations

import re
import threading
import time

# A server asking us to slow down: RFC 5530's codes, and Microsoft 365's wording, which comes
# with or without a code ("NO Request is throttled. Suggested Backoff Time: 1500 ms"). Gmail's
# bandwidth cap, reported as "NO [OVERQUOTA] Account exceeded command or bandwidth limits" (its
# OVERQUOTA is not a full mailbox) and as "* BYE Session expired, please login again" in the
# middle of a transfer, is a throttle too: waited out, never a message's failure.
THROTTLE_CODES = ("[THROTTLED", "[UNAVAILABLE", "[LIMIT")
THROTTLE_WORDS = ("REQUEST IS THROTTLED", "SUGGESTED BACKOFF TIME", "SERVER UNAVAILABLE", "BANDWIDTH LIMIT",
                  "SESSION EXPIRED")
_SUGGESTED = re.compile(r"suggested\s+backoff\s+time\W*(\d+(?:\.\d+)?)\s*(ms|milli\w*|s|sec\w*)?", re.I)


def is_throttle(text: str) -> bool:
    """Whether a server's answer (NO, BAD or BYE) asks the client to slow down and come back; a
    per-message size limit ("[LIMIT] Mail size is larger...") does not."""
    upper = text.upper()
    if "[LIMIT]" in upper and "SIZE" in upper:
        return False
    return any(c in upper for c in THROTTLE_CODES) or any(w in upper for w in THROTTLE_WORDS)


def suggested_wait(text: str) -> float | None:
    """Seconds the server asked us to wait ("Suggested Backoff Time: 299609 ms"), if it said."""
    m = _SUGGESTED.search(text)
    if m is None:
        return None
    unit = (m.group(2) or "ms").lower()
    return float(m.group(1)) / (1 if unit.startswith("s") else 1000)


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

    @property
    def limited(self) -> bool:
        return bool(self.bytes_rate or self.msgs_rate)

    def acquire(self, messages: int, nbytes: int, stop: threading.Event | None = None) -> bool:
        """Wait until this batch fits the limits; False if stop was set meanwhile."""
        with self._lock:
            now = ready = self._clock()
            if self.msgs_rate:
                self._next_msgs = max(self._next_msgs, ready) + messages / self.msgs_rate
                ready = max(ready, self._next_msgs)
            if self.bytes_rate:
                self._next_bytes = max(self._next_bytes, ready) + nbytes / self.bytes_rate
                ready = max(ready, self._next_bytes)
            wait = ready - now
        if wait <= 0:
            return True
        if stop is None:
            time.sleep(wait)
            return True
        return not stop.wait(wait)


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
