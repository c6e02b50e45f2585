"""One mailbox of a batch as a task: the same function on the local pool and on a Dask worker.

A MailboxTask is what travels to a worker (pickled): URLs, options, and *where* secrets are
(password file paths, the name of an environment variable, a token command), never a secret.
The worker reads the secret itself: from the file on shared storage, from its own environment
(MIGRATOR_SRC_PASSWORD / MIGRATOR_DST_PASSWORD set on the workers), or from its keyring.

migrate_mailbox never raises for a failure migrator knows (one line and an exit code in its
result, so the batch goes on and Dask does not retry a wrong password); anything else raises,
and Dask retries it (--task-retries). A worker that dies is rerun by the scheduler on another
worker: the mailbox resumes from its checkpoint (--state-dir on shared storage), or without one
is reconciled with the destination (docs/batch.md: what that costs).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, replace

from migrator import hostlimits
from migrator.batch import BatchRow, state_path_for
from migrator.cli.options import ConnOptions, FilterOptions, MappingOptions, RunOptions
from migrator.errors import EXIT_INTERRUPTED, MigratorError
from migrator.governor import Governors


@dataclass(frozen=True)
class MailboxTask:
    batch_id: str
    row: BatchRow
    conn: ConnOptions
    run: RunOptions
    mapping: MappingOptions
    filters: FilterOptions
    caps: hostlimits.Caps
    per_account: int  # connections of this mailbox's own run per host (Gmail allows 15 per account)
    state_dir: str | None = None
    cluster: bool = False  # limits and the stop come from the Dask scheduler
    # --encrypt-to recipients for archive destinations, --identity for encrypted archive sources
    # (the file's path: read where the task runs, never sent anywhere)
    encrypt_to: tuple[str, ...] = ()
    identity: str | None = None


def tasks_for(batch_id: str, rows: list[BatchRow], **common) -> list[MailboxTask]:
    """The tasks of a batch: one per mailbox, the same options for all (MailboxTask's fields)."""
    return [MailboxTask(batch_id, row, **common) for row in rows]


def migrate_mailbox(task: MailboxTask) -> dict:
    """Copy one mailbox; its outcome as a dict (batchrun.mailbox_result's fields)."""
    from migrator import batchrun

    started = time.time()
    where = f"{socket.gethostname()}:{os.getpid()}"
    stopped = batchrun.stop_signal(task.batch_id, task.cluster)
    if stopped():
        return batchrun.mailbox_result(task.row, EXIT_INTERRUPTED, started, where, status="not started",
                                       error="not started: the batch was interrupted")
    try:
        report = _run(task, stopped)
    except MigratorError as e:
        code = e.exit_code
        return batchrun.mailbox_result(task.row, code, started, where, error=str(e), hint=e.hint)
    code = EXIT_INTERRUPTED if report["interrupted"] else (0 if report["ok"] else 1)
    return batchrun.mailbox_result(task.row, code, started, where, report=report)


def _governors(task: MailboxTask, run: RunOptions) -> Governors:
    """The batch's governors in this process, made once (batchrun.shared_governors); on a cluster
    every other process of the batch hears of their pauses, and they of theirs."""
    governors = run.governors()
    if task.cluster:
        from migrator import cluster

        cluster.share_throttles(task.batch_id, governors)
    return governors


def _run(task: MailboxTask, stopped) -> dict:
    from migrator import batchrun, runner
    from migrator.cli.options import connectors, run_settings, with_encryption

    row = task.row
    conn = replace(task.conn, src_password_file=row.src_password_file or task.conn.src_password_file,
                   dst_password_file=row.dst_password_file or task.conn.dst_password_file,
                   src_auth_user=row.src_auth_user or task.conn.src_auth_user,
                   dst_auth_user=row.dst_auth_user or task.conn.dst_auth_user)
    src, dst = connectors(row.source, row.destination, conn)
    with_encryption(src, dst, list(task.encrypt_to) or None, None, task.identity)
    workers, needs = hostlimits.mailbox_needs(src.endpoint, dst.endpoint, task.run.workers, task.per_account,
                                              task.caps)
    # This run's own cap per host is what it reserved: its workers share it (HostSlots).
    own_cap = max((n.connections for n in needs.values()), default=None)
    stop = threading.Event()
    watcher = batchrun.watch_stop(stopped, stop)
    try:
        with batchrun.host_limits(task.caps, task.cluster).reserve(needs, stopped):
            # The planning connections go on to the run (spare): one login less per side and mailbox.
            plan, spare = runner.plan_keeping_connections(runner.new_plan(src, dst, task.filters.parsed()), src, dst,
                                                          task.mapping.planning(), with_status=False)
            try:
                state = state_path_for(task.state_dir, runner.default_state_path(plan)) if task.state_dir else None
                # Rates (--max-*-per-second) are per run; a batch runs several: not offered here.
                run = replace(task.run, workers=workers, state=state, max_connections_per_host=own_cap)
                settings = run_settings(src, dst, run, quiet=True)
                # One throttle governor per host for every mailbox this process runs (batchrun).
                settings.engine.governors = batchrun.shared_governors(task.batch_id, lambda: _governors(task, run))
            except BaseException:
                for store in spare:
                    store.close()
                raise
            return runner.execute(plan, src, dst, settings, command="batch", print_fn=lambda *_: None, stop=stop,
                                  spare=spare)
    finally:
        stop.set()  # ends the watcher
        watcher.join()
