"""A batch's run: which mailboxes to run (the batch journal), where (a local pool of threads or a
Dask cluster, cluster.py), following them, and stopping cleanly on Ctrl-C or SIGTERM.

Both places run the same task function (cli/batch_task.migrate_mailbox) on the same task
objects; only submitting, the per-host limits and the stop signal differ:
- local pool: one LocalHostLimits for the process; the stop is a threading.Event; one set of
  throttle governors (shared_governors) for every mailbox;
- cluster: distributed.Semaphore leases plus a local cap per worker process; the stop is a
  distributed.Event the tasks watch. The client never opens a mail connection itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from migrator import hostlimits
from migrator.batch import BatchRow
from migrator.errors import EXIT_INTERRUPTED
from migrator.governor import Governors

STOP_WAIT = 60.0  # after Ctrl-C, seconds to let running mailboxes stop and report
WATCH_EVERY = 0.5

_local_stops: dict[str, threading.Event] = {}
_shared_governors: dict[str, Governors] = {}
_governors_lock = threading.Lock()


def shared_governors(batch_id: str, made: Callable[[], Governors]) -> Governors:
    """The throttle governors of this batch in this process: every mailbox run here (the local
    pool's threads, or one Dask worker process's tasks) shares them, so a throttle on one mailbox's
    session pauses all of them on that host. Across the processes of a cluster each process has its
    own, which tell each other of every pause (cluster.share_throttles)."""
    with _governors_lock:
        if batch_id not in _shared_governors:
            _shared_governors[batch_id] = made()
        return _shared_governors[batch_id]


def forget_governors(batch_id: str) -> None:
    with _governors_lock:
        _shared_governors.pop(batch_id, None)


def stop_signal(batch_id: str, cluster: bool) -> Callable[[], bool]:
    """What a task asks to know whether its batch was stopped."""
    if cluster:
        from migrator import cluster as dask_side

        return dask_side.stop_signal(batch_id)
    event = _local_stops.setdefault(batch_id, threading.Event())
    return event.is_set


def watch_stop(stopped: Callable[[], bool], stop: threading.Event) -> threading.Thread:
    """A thread setting `stop` (the run's own) once the batch is stopped; it ends when `stop` is set."""
    def watch() -> None:
        while not stop.wait(WATCH_EVERY):
            try:
                if stopped():
                    stop.set()
            except Exception:  # the scheduler out of reach: keep running, look again
                continue

    thread = threading.Thread(target=watch, name="batch-stop-watch", daemon=True)
    thread.start()
    return thread


def host_limits(caps: hostlimits.Caps, cluster: bool) -> hostlimits.HostLimits:
    if cluster:
        from migrator import cluster as dask_side

        return dask_side.ClusterHostLimits(caps)
    return hostlimits.process_limits(caps)


def mailbox_result(row: BatchRow, code: int, started: float, where: str, *, status: str | None = None,
                   error: str | None = None, hint: str | None = None, report: dict | None = None) -> dict[str, Any]:
    """One mailbox's line of the fleet report (fleet_report.SCHEMA)."""
    finished = time.time()
    totals = (report or {}).get("totals", {})
    first = _first_error(report) if report else ({"reason": error, "hint": hint} if error else None)
    elapsed = (report or {}).get("elapsed_seconds", round(finished - started, 3))
    copied = totals.get("copied", 0)
    waits = (report or {}).get("throttle_waits") or []
    return {
        "line": row.line, "source": row.source, "destination": row.destination,
        "status": status or status_of(code), "exit_code": code,
        "folders": len((report or {}).get("folders", {})),
        "copied": copied, "already_copied": totals.get("already_copied", 0) + totals.get("found_on_destination", 0),
        "skipped": sum(totals.get("skipped", {}).values()), "failed": totals.get("failed", 0),
        "bytes": totals.get("copied_bytes", 0),
        "started": round(started, 3), "finished": round(finished, 3), "elapsed_seconds": elapsed,
        "messages_per_second": round(copied / elapsed, 1) if elapsed else 0.0,
        "first_error": first, "ran_on": where,
        # the pauses a server asked for on this mailbox's hosts while it ran (any mailbox's throttle)
        "throttle_waits": len(waits), "waited_seconds": round(sum(w["seconds"] for w in waits), 3),
    }


def _first_error(report: dict) -> dict[str, Any] | None:
    for key in ("folder_errors", "failures"):
        if report.get(key):
            first = report[key][0]
            return {"reason": first["reason"], "folder": first.get("folder"), "uid": first.get("uid")}
    return None


def status_of(code: int) -> str:
    return {0: "done", EXIT_INTERRUPTED: "interrupted"}.get(code, "failed")


def unfinished(row: BatchRow, why: str) -> dict[str, Any]:
    """A mailbox the batch did not get to finish (stopped first)."""
    now = time.time()
    result = mailbox_result(row, EXIT_INTERRUPTED, now, "", status="not started", error=why)
    result["started"] = result["finished"] = None
    return result


class Executor:
    """Where the tasks run. Subclasses submit and wait; following what ends is shared."""

    description = ""

    def __init__(self, batch_id: str):
        self.batch_id = batch_id
        self._pending: dict[Any, Any] = {}  # future -> task

    def submit(self, tasks: list) -> None:
        raise NotImplementedError

    def _wait(self, futures: list, timeout: float | None) -> set:
        """The futures done among `futures` (at least one, unless the timeout passed first)."""
        raise NotImplementedError

    def _outcome(self, future) -> dict[str, Any] | BaseException:
        raise NotImplementedError

    def results(self, timeout: float | None = None) -> Iterator[tuple[Any, dict[str, Any] | BaseException]]:
        """(task, its result or the exception it raised) as tasks end; within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            for future in self._wait(list(self._pending), left):
                yield self._pending.pop(future), self._outcome(future)

    def unfinished(self) -> list:
        return list(self._pending.values())

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalPool(Executor):
    """`parallel` threads of this process, each running the task function."""

    def __init__(self, batch_id: str, parallel: int, task_fn: Callable[[Any], dict]):
        super().__init__(batch_id)
        self.description = f"a local pool ({parallel} mailbox(es) at once)"
        self.task_fn = task_fn
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="mailbox")
        _local_stops[batch_id] = threading.Event()

    def submit(self, tasks: list) -> None:
        self._pending = {self._pool.submit(self.task_fn, t): t for t in tasks}

    def _wait(self, futures: list, timeout: float | None) -> set:
        return wait(futures, timeout=timeout, return_when=FIRST_COMPLETED).done

    def _outcome(self, future) -> dict[str, Any] | BaseException:
        error = future.exception()
        return error if error is not None else future.result()

    def stop(self) -> None:
        _local_stops[self.batch_id].set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        _local_stops.pop(self.batch_id, None)
        forget_governors(self.batch_id)


@dataclass
class Outcome:
    """What the batch learnt: each mailbox's result, and whether it was stopped."""

    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # line -> result
    interrupted: bool = False


def follow(executor: Executor, tasks: list, on_result: Callable[[Any, dict[str, Any]], None],
           say: Callable[[str], None]) -> Outcome:
    """Run the tasks and hand each result to on_result as it comes. Ctrl-C / SIGTERM: the tasks
    are told to stop; running mailboxes stop within seconds and report (a second Ctrl-C does not
    wait for them); the mailboxes left are marked unfinished."""
    outcome = Outcome()

    def take(task, result: dict[str, Any] | BaseException) -> None:
        if isinstance(result, BaseException):
            result = task_failure(task.row, result)
        outcome.results[task.row.line] = result
        on_result(task, result)

    executor.submit(tasks)
    try:
        for task, result in executor.results():
            take(task, result)
    except KeyboardInterrupt:
        outcome.interrupted = True
        executor.stop()
        say("stopping: the running mailboxes finish their current batch of messages (Ctrl-C again: do not wait)")
        try:
            for task, result in executor.results(timeout=STOP_WAIT):
                take(task, result)
        except KeyboardInterrupt:
            pass
    for task in executor.unfinished():
        take(task, unfinished(task.row, "not finished: the batch was interrupted"))
    return outcome


def task_failure(row: BatchRow, error: BaseException) -> dict[str, Any]:
    """A task that raised (after its retries), or whose worker died too often: a failed mailbox."""
    from migrator.errors import EXIT_MESSAGES_FAILED, MigratorError

    code = error.exit_code if isinstance(error, MigratorError) else EXIT_MESSAGES_FAILED
    why = str(error) if isinstance(error, MigratorError) else f"the task failed: {type(error).__name__}: {error}"
    return mailbox_result(row, code, time.time(), "", error=why)
