"""The Dask side of a batch (`migrator batch --cluster`): the optional extra `migrator[dask]`.

Each mailbox is one task (pure=False: the same arguments twice are two runs, never a cached
result; retries=--task-retries for a task that raises). The scheduler reruns the task of a worker
that died on another worker (up to its `distributed.scheduler.allowed-failures`, 3 by default).
The client submits, follows and prints; it opens no mail connection.

Shared by every worker of the cluster, through the scheduler, all named after the host:
- `migrator-connections-HOST` and `migrator-mailboxes-HOST`: distributed.Semaphore, the batch-wide
  caps; a mailbox takes its leases one by one while holding `migrator-admission` (a
  distributed.Lock), so two mailboxes never each hold part of what they need (hostlimits.py);
- `migrator-stop-BATCH`: a distributed.Event; Ctrl-C on the client sets it, tasks watch it;
- `migrator-throttle-BATCH`: a topic of the scheduler's event log. A worker process whose session
  a server throttles logs the pause there; every other process of the batch, subscribed to it,
  pauses its own sessions to that host (share_throttles), within milliseconds: the backoff of a
  host holds across the batch, not per process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from migrator import hostlimits
from migrator.batchrun import Executor
from migrator.errors import ConnectionFailed, Interrupted, UsageError
from migrator.governor import Governors, Wait

log = logging.getLogger("migrator.cluster")
ADMISSION = "migrator-admission"
TRANSIT = 1.0  # seconds: the most a told pause is taken to have spent on its way (clocks may differ)


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UsageError("--cluster needs Dask's distributed package",
                         hint="pip install 'migrator[dask]'") from None
    return distributed


def stop_signal(batch_id: str) -> Callable[[], bool]:
    event = _distributed().Event(f"migrator-stop-{batch_id}")
    return event.is_set


def share_throttles(batch_id: str, governors: Governors) -> None:
    """For the Governors a worker process makes once per batch (batchrun.shared_governors): tell the
    batch's other processes of every pause a server asks of this one's sessions, and apply theirs
    here. Each pause says how long it has still to run and when it was sent; the receiver takes off
    the time it spent on its way, counted as at most TRANSIT, so a clock that differs between
    machines neither drops a pause nor stretches it much."""
    client = _distributed().get_client()  # the worker's own client
    topic, me = f"migrator-throttle-{batch_id}", f"{socket.gethostname()}:{os.getpid()}"

    def tell(wait: Wait) -> None:
        try:
            client.log_event(topic, {"from": me, "side": wait.side, "host": wait.host, "seconds": wait.seconds,
                                     "sent": time.time(), "reason": wait.reason})
        except Exception as e:  # the scheduler out of reach: this process still waits; the others may not
            log.warning("could not tell the batch's other workers of a pause: %s", e)

    def hear(event: tuple) -> None:
        _stamp, msg = event
        if msg.get("from") == me:
            return
        spent = min(max(time.time() - msg["sent"], 0.0), TRANSIT)
        if msg["seconds"] - spent > 0:
            governors.heard(msg["side"], msg["host"], msg["seconds"] - spent, msg["reason"])

    client.subscribe_topic(topic, hear)
    governors.relay = tell
    for event in client.get_events(topic):  # a pause told before this process listened may be running
        hear(event)


class ClusterHostLimits:
    """hostlimits.HostLimits across a Dask cluster: this process's local cap, then the leases."""

    def __init__(self, caps: hostlimits.Caps):
        self.caps = caps

    @contextmanager
    def reserve(self, needs: Mapping[str, hostlimits.Need], stopped: Callable[[], bool]) -> Iterator[None]:
        with hostlimits.process_limits(self.caps).reserve(needs, stopped):
            held = self._lease(needs, stopped)
            try:
                yield
            finally:
                for semaphore, count in held:
                    for _ in range(count):
                        semaphore.release()

    def _semaphores(self, needs: Mapping[str, hostlimits.Need]) -> list[tuple[Any, int]]:
        d = _distributed()
        wanted = []
        for host, need in sorted(needs.items()):
            if self.caps.connections_per_host is not None:
                wanted.append((d.Semaphore(self.caps.connections_per_host, f"migrator-connections-{host}"),
                               need.connections))
            if self.caps.mailboxes_per_host is not None:
                wanted.append((d.Semaphore(self.caps.mailboxes_per_host, f"migrator-mailboxes-{host}"),
                               need.mailboxes))
        return wanted

    def _lease(self, needs: Mapping[str, hostlimits.Need], stopped: Callable[[], bool]) -> list[tuple[Any, int]]:
        wanted = self._semaphores(needs)
        if not wanted:
            return []
        lock = _distributed().Lock(ADMISSION)
        while not lock.acquire(timeout=hostlimits.POLL):
            if stopped():
                raise Interrupted("interrupted while waiting for a free connection")
        held: list[tuple[Any, int]] = []
        try:
            for semaphore, count in wanted:
                held.append((semaphore, 0))
                for _ in range(count):
                    while not semaphore.acquire(timeout=hostlimits.POLL):
                        if stopped():
                            raise Interrupted("interrupted while waiting for a free connection")
                    held[-1] = (semaphore, held[-1][1] + 1)
        except BaseException:
            for semaphore, count in held:
                for _ in range(count):
                    semaphore.release()
            raise
        finally:
            lock.release()
        return held


class DaskExecutor(Executor):
    """Tasks on a Dask cluster: `address` (tcp://HOST:8786) or 'local' (a LocalCluster of
    `parallel` worker processes, one thread each, started here and closed at the end)."""

    def __init__(self, batch_id: str, address: str, parallel: int, retries: int, task_fn: Callable[[Any], dict],
                 quiet_logs: bool = True):
        super().__init__(batch_id)
        d = _distributed()
        if quiet_logs:  # a worker that dies is expected here: said once by the batch, not in tracebacks
            for name in ("distributed", "tornado"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        self.task_fn, self.retries = task_fn, retries
        self._cluster = None
        try:
            if address == "local":
                self._cluster = d.LocalCluster(n_workers=parallel, threads_per_worker=1, processes=True,
                                               dashboard_address=None)
                self.client = d.Client(self._cluster)
            else:
                self.client = d.Client(address, timeout="20s")
        except OSError as e:
            raise ConnectionFailed(f"cannot reach the Dask scheduler at {address}: {e}") from None
        services = self.client.scheduler_info().get("services", {}) if address != "local" else {}
        link = self.client.dashboard_link if "dashboard" in services else None
        self.description = f"the Dask cluster {address}" + (f" (dashboard: {link})" if link else "")
        self._stop = d.Event(f"migrator-stop-{batch_id}", client=self.client)

    def submit(self, tasks: list) -> None:
        futures = [self.client.submit(self.task_fn, t, pure=False, retries=self.retries,
                                      key=f"mailbox-{t.row.line}-{self.batch_id}") for t in tasks]
        self._pending = dict(zip(futures, tasks, strict=True))

    def _wait(self, futures: list, timeout: float | None) -> set:
        d = _distributed()
        try:
            return d.wait(futures, timeout=timeout, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            return set()

    def _outcome(self, future) -> dict[str, Any] | BaseException:
        try:
            return future.result()
        except Exception as e:  # the task raised after its retries, or its workers died too often
            return e

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        try:
            if self._pending:
                self.client.cancel(list(self._pending))
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()
