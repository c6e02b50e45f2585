"""migrate and verify: SOURCE DESTINATION commands (verify also takes a PLAN file)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from migrator.cli.app import app, finish_run
from migrator.cli.options import (
    BatchMB, ConnOptions, Debug, DeleteExtra, DryRun, ExcludeOpt, FolderOpt, IncludeDeleted, IncludeOpt,
    MapOpt, MaxBps, MaxConns, MaxMps, NoSyncFlags, PresetOpt, Quiet, Report, ResetState, RetryFailed, State,
    SubscribeOpt, Workers, connectors, engine_options, plan_connectors, planning, setup_logging,
    with_connection_options,
)
from migrator.errors import EXIT_MESSAGES_FAILED, UsageError
from migrator.plan import Plan


@app.command()
@with_connection_options
def migrate(
    source: Annotated[str, typer.Argument(help="Source account, e.g. imaps://alice@old.example.com")],
    destination: Annotated[str, typer.Argument(help="Destination account, e.g. imaps://alice@new.example.com")],
    dry_run: DryRun = False,
    workers: Workers = 4,
    state: State = None,
    reset_state: ResetState = False,
    report: Report = None,
    include_deleted: IncludeDeleted = False,
    no_sync_flags: NoSyncFlags = False,
    delete_extra: DeleteExtra = False,
    retry_failed: RetryFailed = False,
    batch_mb: BatchMB = 8.0,
    max_bytes_per_second: MaxBps = None,
    max_messages_per_second: MaxMps = None,
    max_connections_per_host: MaxConns = 10,
    map_: MapOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    folder: FolderOpt = None,
    preset: PresetOpt = None,
    subscribe: SubscribeOpt = "source",
    quiet: Quiet = False,
    debug: Debug = False,
    *,
    conn: ConnOptions,
) -> None:
    """Copy every folder and message from SOURCE to DESTINATION (plan + run in one step)."""
    from migrator import runner

    setup_logging(debug)
    planning_opts = planning(map_, include, exclude, folder, preset, subscribe)
    src, dst = connectors(source, destination, conn)
    opts = engine_options(
        src, dst, workers=workers, dry_run=dry_run, include_deleted=include_deleted, no_sync_flags=no_sync_flags,
        delete_extra=delete_extra, retry_failed=retry_failed, batch_mb=batch_mb,
        max_bytes_per_second=max_bytes_per_second, max_messages_per_second=max_messages_per_second,
        max_connections_per_host=max_connections_per_host,
    )
    plan = Plan(src.endpoint, dst.endpoint, source_secret=src.secret.describe(), destination_secret=dst.secret.describe())
    runner.check_endpoints(plan)
    plan, spare = runner.plan_keeping_connections(plan, src, dst, planning_opts, with_status=False)
    settings = runner.RunSettings(opts, state_path=state, reset_state=reset_state, report_path=report, quiet=quiet)
    result = runner.execute(plan, src, dst, settings, command="migrate", spare=spare)
    finish_run(result)


@app.command(name="verify")
@with_connection_options
def verify_cmd(
    source: Annotated[str, typer.Argument(help="Source account URL, or a PLAN file (then no DESTINATION)")],
    destination: Annotated[Optional[str], typer.Argument(help="Destination account URL")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    report: Report = None,
    include_deleted: IncludeDeleted = False,
    map_: MapOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    folder: FolderOpt = None,
    preset: PresetOpt = None,
    debug: Debug = False,
    *,
    conn: ConnOptions,
) -> None:
    """Compare SOURCE and DESTINATION (or the folders of a PLAN) message by message. Read-only; exit 0 only if identical."""
    from migrator import runner

    setup_logging(debug)
    if destination is None:
        from migrator.plan_io import read_plan

        if "://" in source:
            raise UsageError("verify needs SOURCE and DESTINATION, or one PLAN file")
        if map_ or include or exclude or folder or preset:
            raise UsageError("with a PLAN file, edit the plan instead of giving --map/--include/--exclude/--folder/--preset")
        plan = read_plan(source)
        runner.check_endpoints(plan)
        src, dst = plan_connectors(plan, conn)
        plan.check_collisions()
    else:
        planning_opts = planning(map_, include, exclude, folder, preset, "source")
        src, dst = connectors(source, destination, conn)
        plan = Plan(src.endpoint, dst.endpoint)
        runner.check_endpoints(plan)
        plan = runner.build_plan(plan, src, dst, planning_opts, with_status=False)
    result = runner.execute_verify(plan, src, dst, include_deleted, report, as_json)
    if not result["identical"]:
        raise typer.Exit(EXIT_MESSAGES_FAILED)
