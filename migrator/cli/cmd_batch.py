"""batch FILE.csv: migrate many mailboxes, one line each, on a local pool or a Dask cluster."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import typer

from migrator.cli.app import app
from migrator.cli.options import (
    AllowPlain,
    BatchMB,
    CaFile,
    Compress,
    ConnOptions,
    Debug,
    DryRun,
    DstAuthUser,
    EncryptTo,
    EncryptToFile,
    FilterOptions,
    Identity,
    IncludeDeleted,
    Insecure,
    MappingOptions,
    MaxBytesDay,
    NoSyncFlags,
    Quiet,
    RunOptions,
    SrcAuthUser,
    Workers,
    setup_logging,
    with_filter_options,
    with_folder_choice,
)

StateDir = Annotated[str | None, typer.Option(
    "--state-dir", help="Directory for the per-mailbox checkpoints and the batch journal (default "
                        "~/.local/state/migrator/). On a cluster: a directory every worker sees at the same path.")]
Cluster = Annotated[str | None, typer.Option(
    "--cluster", metavar="tcp://HOST:8786|local",
    help="Run each mailbox as a task on this Dask scheduler ('local': a LocalCluster of --parallel processes "
         "started here). Needs `pip install 'migrator\\[dask]'`; workers read passwords themselves (docs/batch.md).")]
TaskRetries = Annotated[int, typer.Option(
    "--task-retries", min=0, max=20, help="On a cluster: times Dask reruns a mailbox task that raised (a worker "
                                          "that dies is rerun by the scheduler anyway).")]
HostConns = Annotated[int, typer.Option(
    "--max-connections-per-host", min=1,
    help="Open connections per host name, all mailboxes (and all cluster workers) of the batch together.")]
AccountConns = Annotated[int, typer.Option(
    "--max-connections-per-account", min=1,
    help="Open connections of one mailbox's run per host (providers limit connections per account: Gmail 15).")]
HostBoxes = Annotated[int | None, typer.Option(
    "--max-mailboxes-per-host", min=1, help="Mailboxes copied at once per host name, the whole batch together.")]
RetryFailedBoxes = Annotated[bool, typer.Option(
    "--retry-failed", help="Run again the mailboxes that failed in an earlier run of this batch (and the messages "
                           "that failed in them).")]
RerunAll = Annotated[bool, typer.Option(
    "--rerun-all", help="Run every mailbox, also those done in an earlier run (an incremental pass).")]

FleetJson = Annotated[str | None, typer.Option("--report", help="Write the fleet report as JSON.")]
FleetHtml = Annotated[str | None, typer.Option(
    "--html-report", help="Write the fleet report as one static HTML page (no external assets).")]


# long: a typer command declares one parameter per option; the body is 25 lines
@app.command()
@with_folder_choice
@with_filter_options
def batch(
    csv_file: Annotated[str, typer.Argument(help="CSV with columns source,destination"
                                                 "[,src_password_file,dst_password_file,src_auth_user,dst_auth_user]")],
    parallel: Annotated[int, typer.Option("--parallel", "-p", min=1, max=256,
                                          help="Mailboxes migrated at once (--cluster local: worker processes).")] = 1,
    workers: Workers = 2,
    state_dir: StateDir = None,
    report: FleetJson = None,
    html_report: FleetHtml = None,
    cluster: Cluster = None,
    task_retries: TaskRetries = 1,
    dry_run: DryRun = False,
    include_deleted: IncludeDeleted = False,
    no_sync_flags: NoSyncFlags = False,
    retry_failed: RetryFailedBoxes = False,
    rerun_all: RerunAll = False,
    batch_mb: BatchMB = 8.0,
    max_connections_per_host: HostConns = 10,
    max_connections_per_account: AccountConns = 10,
    max_mailboxes_per_host: HostBoxes = None, max_bytes_per_day: MaxBytesDay = None,
    ca_file: CaFile = None,
    insecure: Insecure = False,
    allow_plaintext: AllowPlain = False,
    compress: Compress = False,
    src_auth_user: SrcAuthUser = None,
    dst_auth_user: DstAuthUser = None,
    quiet: Quiet = False,
    debug: Debug = False,
    encrypt_to: EncryptTo = None,
    encrypt_to_file: EncryptToFile = None,
    identity: Identity = None,
    *,
    mapping: MappingOptions,
    filters: FilterOptions,
) -> None:
    """Migrate every mailbox listed in CSV_FILE; a failing mailbox does not stop the others. Rerun to resume:
    mailboxes done are skipped at once (the batch journal), failed ones with --retry-failed."""
    from migrator import hostlimits
    from migrator.batch import read_batch
    from migrator.cli.batch_task import migrate_mailbox, tasks_for

    setup_logging(debug)
    started = time.time()
    rows = read_batch(csv_file)
    run = RunOptions(dry_run=dry_run, workers=workers, include_deleted=include_deleted, no_sync_flags=no_sync_flags,
                     retry_failed=retry_failed, batch_mb=batch_mb, max_bytes_per_day=max_bytes_per_day)
    filters.parsed(), run.governors()  # a bad filter or size is refused here, once, not by every mailbox
    recipients = _recipients(encrypt_to, encrypt_to_file)  # likewise a bad recipient

    def make_tasks(batch_id: str, chosen: list) -> list:
        return tasks_for(
            batch_id, chosen, run=run,
            conn=ConnOptions(ca_file=ca_file, insecure=insecure, allow_plaintext=allow_plaintext, compress=compress,
                             src_auth_user=src_auth_user, dst_auth_user=dst_auth_user),
            mapping=mapping, filters=filters, caps=hostlimits.Caps(max_connections_per_host, max_mailboxes_per_host),
            per_account=max_connections_per_account,
            state_dir=state_dir, cluster=bool(cluster), encrypt_to=recipients, identity=identity)

    def make_executor(batch_id: str):
        return _executor(cluster, batch_id, parallel, task_retries, migrate_mailbox, debug)

    results, interrupted, where = _run_rows(csv_file, rows, state_dir, (retry_failed, rerun_all, dry_run, quiet),
                                            make_tasks, make_executor)
    _conclude(results, interrupted, csv_file, where, started, report, html_report, quiet)


def _recipients(encrypt_to: list[str] | None, encrypt_to_file: list[str] | None) -> tuple[str, ...]:
    """--encrypt-to/--encrypt-to-file, checked once for the whole batch (each mailbox with an
    archive destination gets them; any other destination fails with one line)."""
    if not (encrypt_to or encrypt_to_file):
        return ()
    from migrator.stores.archive_crypt import parse_recipients

    return parse_recipients(encrypt_to or (), encrypt_to_file or ())


def _run_rows(csv_file: str, rows: list, state_dir: str | None, flags: tuple[bool, bool, bool, bool],
              make_tasks, make_executor) -> tuple[list[dict[str, Any]], bool, str]:
    """Run the mailboxes the batch journal says are left; each result journalled and printed as it
    comes. Returns every mailbox's result (those of earlier runs too), whether it was stopped, and
    where it ran."""
    from migrator import batchrun, runner
    from migrator.batch_journal import BatchJournal, journal_path

    retry_failed, rerun_all, dry_run, quiet = flags
    journal = BatchJournal(journal_path(state_dir or runner.state_dir(), csv_file))
    try:
        chosen = journal.select(rows, retry_failed, rerun_all)
        batch_id = uuid.uuid4().hex[:12]
        tasks = make_tasks(batch_id, chosen.run)
        executor = make_executor(batch_id)
        _say_start(chosen, executor.description, quiet)
        done = [0]

        def on_result(task, result: dict[str, Any]) -> None:
            if not dry_run:
                journal.record(task.row, result)
            done[0] += 1
            if not quiet or result["exit_code"]:
                typer.echo(f"[{done[0]}/{len(tasks)}] " + _outcome_line(result))

        try:
            outcome = batchrun.follow(executor, tasks, on_result, lambda text: typer.echo(text, err=True))
        finally:
            executor.close()
    finally:
        journal.close()
    return chosen.done + chosen.failed + list(outcome.results.values()), outcome.interrupted, executor.description


def _executor(cluster: str | None, batch_id: str, parallel: int, retries: int, task_fn, debug: bool):
    from migrator import batchrun

    if cluster:
        from migrator.cluster import DaskExecutor

        return DaskExecutor(batch_id, cluster, parallel, retries, task_fn, quiet_logs=not debug)
    return batchrun.LocalPool(batch_id, parallel, task_fn)


def _say_start(chosen, where: str, quiet: bool) -> None:
    if quiet:
        return
    line = f"batch: {len(chosen.run)} mailbox(es) to run on {where}"
    if chosen.done:
        line += f"; {len(chosen.done)} done in an earlier run, skipped"
    if chosen.failed:
        line += f"; {len(chosen.failed)} failed in an earlier run, not retried (--retry-failed)"
    typer.echo(line)


def _outcome_line(result: dict[str, Any]) -> str:
    """What the batch says of one mailbox when it is done."""
    status = "ok" if result["exit_code"] == 0 else f"exit {result['exit_code']}"
    first = result.get("first_error")
    detail = f", {result['copied']} copied, {result['failed']} failed"
    if first and result["exit_code"] not in (0, 1):
        detail = f": {first['reason']}"
    return f"line {result['line']}: {result['source']} -> {result['destination']}: {status}{detail}"


def _conclude(results: list[dict[str, Any]], interrupted: bool, csv_file: str, where: str, started: float,
              report: str | None, html_report: str | None, quiet: bool) -> None:
    """The reports, the last lines, and the exit code (the worst of the mailboxes; 130 if stopped)."""
    from migrator.batch import batch_exit_code
    from migrator.errors import EXIT_INTERRUPTED
    from migrator.fleet_report import fleet_report, render_html
    from migrator.fsutil import write_json, write_private

    code = EXIT_INTERRUPTED if interrupted else batch_exit_code([r["exit_code"] for r in results])
    fleet = fleet_report(results, csv_file=csv_file, ran_on=where, started=started, exit_code=code,
                         interrupted=interrupted)
    if report:
        write_json(report, fleet)
    if html_report:
        write_private(html_report, render_html(fleet))
    t = fleet["totals"]
    if not quiet or code:
        typer.echo(f"{t['done']} of {t['mailboxes']} mailboxes done without errors; {t['failed']} failed, "
                   f"{t['unfinished']} unfinished; {t['copied']} messages copied.")
    if interrupted:
        typer.echo("migrator: interrupted: rerun the same command to resume (mailboxes done are skipped, the "
                   "others resume from their checkpoints)", err=True)
    if code:
        raise typer.Exit(code)
