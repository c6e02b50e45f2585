"""batch FILE.csv: migrate many mailboxes, one line each, worst exit code wins."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

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
    FilterOptions,
    IncludeDeleted,
    Insecure,
    MappingOptions,
    MaxConns,
    NoSyncFlags,
    Quiet,
    RetryFailed,
    RunOptions,
    SrcAuthUser,
    Workers,
    connectors,
    run_settings,
    setup_logging,
    with_filter_options,
    with_folder_choice,
)

if TYPE_CHECKING:  # imported when a batch runs, not at every start of the CLI
    from migrator.batch import RowResult

StateDir = Annotated[str | None, typer.Option(
    "--state-dir", help="Directory for the per-mailbox checkpoint files (default ~/.local/state/migrator/).")]


@app.command()
@with_folder_choice
@with_filter_options
def batch(
    csv_file: Annotated[str, typer.Argument(help="CSV with columns source,destination"
                                                 "[,src_password_file,dst_password_file,src_auth_user,dst_auth_user]")],
    parallel: Annotated[int, typer.Option("--parallel", "-p", min=1, max=32, help="Mailboxes migrated at once.")] = 1,
    workers: Workers = 2,
    state_dir: StateDir = None,
    report: Annotated[str | None, typer.Option("--report", help="Write one JSON report for the whole batch.")] = None,
    dry_run: DryRun = False,
    include_deleted: IncludeDeleted = False,
    no_sync_flags: NoSyncFlags = False,
    retry_failed: RetryFailed = False,
    batch_mb: BatchMB = 8.0,
    max_connections_per_host: MaxConns = 10,
    ca_file: CaFile = None,
    insecure: Insecure = False,
    allow_plaintext: AllowPlain = False,
    compress: Compress = False,
    src_auth_user: SrcAuthUser = None,
    dst_auth_user: DstAuthUser = None,
    quiet: Quiet = False,
    debug: Debug = False,
    *,
    mapping: MappingOptions,
    filters: FilterOptions,
) -> None:
    """Migrate every mailbox listed in CSV_FILE; a failing mailbox does not stop the others. Rerun to resume."""
    from migrator import runner
    from migrator.batch import batch_exit_code, read_batch, run_batch, state_path_for

    setup_logging(debug)
    rows = read_batch(csv_file)
    planning_opts = mapping.planning()
    chosen = filters.parsed()  # the same filters for every mailbox

    def migrate_one(row) -> dict:
        conn = ConnOptions(
            src_password_file=row.src_password_file, dst_password_file=row.dst_password_file, ca_file=ca_file,
            insecure=insecure, allow_plaintext=allow_plaintext, compress=compress,
            src_auth_user=row.src_auth_user or src_auth_user,
            dst_auth_user=row.dst_auth_user or dst_auth_user,
        )
        src, dst = connectors(row.source, row.destination, conn)
        plan = runner.build_plan(runner.new_plan(src, dst, chosen), src, dst, planning_opts, with_status=False)
        plan.check_collisions()
        # Rates (--max-*-per-second) are per run; a batch runs several: not offered here.
        state = state_path_for(state_dir, runner.default_state_path(plan)) if state_dir else None
        run = RunOptions(dry_run=dry_run, workers=workers, state=state, include_deleted=include_deleted,
                         no_sync_flags=no_sync_flags, retry_failed=retry_failed, batch_mb=batch_mb,
                         max_connections_per_host=max_connections_per_host)
        settings = run_settings(src, dst, run, quiet=True)
        return runner.execute(plan, src, dst, settings, command="batch", print_fn=lambda *_: None)

    def on_done(result) -> None:
        if not quiet or result.exit_code:
            typer.echo(_outcome_line(result))

    results = run_batch(rows, migrate_one, parallel, on_done)
    _conclude(results, batch_exit_code(results), csv_file, report, quiet)


def _outcome_line(result: RowResult) -> str:
    """What the batch says of one mailbox when it is done."""
    status = "ok" if result.exit_code == 0 else f"exit {result.exit_code}"
    detail = f": {result.error}" if result.error else f", {result.copied} copied, {result.failed} failed"
    return f"line {result.row.line}: {result.row.source} -> {result.row.destination}: {status}{detail}"


def _conclude(results: list[RowResult], code: int, csv_file: str, report: str | None, quiet: bool) -> None:
    """The batch's report file, its last line, and its exit code (the worst of its mailboxes)."""
    from migrator.fsutil import write_json

    if report:
        write_json(report, {"report_version": 1, "command": "batch", "file": csv_file, "exit_code": code,
                            "mailboxes": [r.as_dict() for r in results]})
    ok = sum(1 for r in results if r.exit_code == 0)
    if not quiet or code:
        typer.echo(f"{ok} of {len(results)} mailboxes done without errors.")
    if code:
        raise typer.Exit(code)
