"""Per-host limits that hold across a whole batch: connections and mailboxes per host name.

A mailbox that starts *reserves* what it may use on each host (`Need`: its connections and one
mailbox), all at once, and gives it back when it ends; inside, its own `HostSlots` (the per-account
cap) hands the reserved connections to its workers. All-at-once is what makes this deadlock-free:
a mailbox never holds part of what it needs while waiting for the rest, so with 3 connections per
host and 2 per mailbox, a second mailbox waits for the first to end instead of taking one
connection each and both waiting forever.

Two implementations of one small interface (`HostLimits.reserve`):
- `LocalHostLimits`: one process (the batch's local pool, and each cluster worker's local cap);
- `migrator.cluster.ClusterHostLimits`: `distributed.Semaphore` leases shared by every worker of a
  Dask cluster, with a `LocalHostLimits` on top in each worker process (Dask warns that leases
  can be overbooked when their refresh times out: the local cap keeps one process honest).

The throttle governor (throttle.py) can key its per-host backoff on the same host names
(`host_key`); nothing here slows a host down, it only bounds how many use it at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from migrator.errors import Interrupted, UsageError

POLL = 0.5  # seconds between looks at the stop signal while waiting


def host_key(host: str) -> str:
    """The name limits are counted under: host names compare without case."""
    return host.lower()


@dataclass(frozen=True)
class Caps:
    """The batch-wide limits; None: unlimited."""

    connections_per_host: int | None = None
    mailboxes_per_host: int | None = None


@dataclass(frozen=True)
class Need:
    """What one mailbox uses on one host while it runs."""

    connections: int
    mailboxes: int = 1


class HostLimits(Protocol):
    def reserve(self, needs: Mapping[str, Need], stopped: Callable[[], bool]):
        """A context manager holding `needs` (host -> Need) until it exits; waits while they do not
        fit; raises Interrupted if `stopped()` turns true meanwhile."""
        ...


def check_needs(needs: Mapping[str, Need], caps: Caps) -> None:
    """A mailbox that needs more than a cap allows would wait forever: refused at once."""
    for host, need in needs.items():
        if caps.connections_per_host is not None and need.connections > caps.connections_per_host:
            raise UsageError(f"a mailbox on {host} needs {need.connections} connections at least, more than "
                             f"--max-connections-per-host {caps.connections_per_host}")


class LocalHostLimits:
    """The caps for every thread of this process: counters under one condition variable."""

    def __init__(self, caps: Caps):
        self.caps = caps
        self._cond = threading.Condition()
        self._conns: dict[str, int] = {}
        self._boxes: dict[str, int] = {}
        self.peak_connections: dict[str, int] = {}  # for reports and tests: the most held at once

    def _fits(self, needs: Mapping[str, Need]) -> bool:
        c, m = self.caps.connections_per_host, self.caps.mailboxes_per_host
        return all((c is None or self._conns.get(h, 0) + n.connections <= c)
                   and (m is None or self._boxes.get(h, 0) + n.mailboxes <= m) for h, n in needs.items())

    def _take(self, needs: Mapping[str, Need], sign: int) -> None:
        for h, n in needs.items():
            self._conns[h] = self._conns.get(h, 0) + sign * n.connections
            self._boxes[h] = self._boxes.get(h, 0) + sign * n.mailboxes
            self.peak_connections[h] = max(self.peak_connections.get(h, 0), self._conns[h])

    def acquire(self, needs: Mapping[str, Need], stopped: Callable[[], bool]) -> None:
        check_needs(needs, self.caps)
        with self._cond:
            while not self._fits(needs):
                if stopped():
                    raise Interrupted("interrupted while waiting for a free connection")
                self._cond.wait(POLL)
            self._take(needs, +1)

    def release(self, needs: Mapping[str, Need]) -> None:
        with self._cond:
            self._take(needs, -1)
            self._cond.notify_all()

    @contextmanager
    def reserve(self, needs: Mapping[str, Need], stopped: Callable[[], bool]) -> Iterator[None]:
        self.acquire(needs, stopped)
        try:
            yield
        finally:
            self.release(needs)


_process_limits: dict[Caps, LocalHostLimits] = {}
_process_lock = threading.Lock()


def process_limits(caps: Caps) -> LocalHostLimits:
    """The one LocalHostLimits of this process for these caps: every mailbox run by a thread of
    this process (the local pool, or one cluster worker) shares it."""
    with _process_lock:
        return _process_limits.setdefault(caps, LocalHostLimits(caps))


def mailbox_needs(src, dst, workers: int, per_account: int | None, caps: Caps) -> tuple[int, dict[str, Need]]:
    """How many workers one mailbox runs, and what it reserves on each host (src, dst: Endpoints).

    A worker holds a source and a destination connection at once: two on one host when both
    sides are there. The mailbox's own cap (per account, Gmail: 15) and the batch's per-host cap
    both bound it; its reservation is exactly what its workers can hold at once."""
    same_host = src.is_network and dst.is_network and host_key(src.host) == host_key(dst.host)
    per_worker = 2 if same_host else 1
    bounds = [b for b in (per_account, caps.connections_per_host) if b]
    limit = min(bounds) if bounds else None
    if limit is not None and limit < per_worker:
        raise UsageError(f"--max-connections-per-host and --max-connections-per-account must be at least "
                         f"{per_worker} (source and destination are on the same host)")
    fitting = max(1, min(workers, limit // per_worker)) if limit is not None else workers
    hosts = {host_key(ep.host) for ep in (src, dst) if ep.is_network}
    return fitting, {h: Need(fitting * per_worker if same_host else fitting) for h in sorted(hosts)}
