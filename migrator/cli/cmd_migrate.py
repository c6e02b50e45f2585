"""migrate and verify: SOURCE DESTINATION commands."""

from __future__ import annotations

from typing import Annotated

import typer

from migrator.cli.app import app, finish_run
from migrator.cli.options import (
    AllowPlain, BatchMB, CaFile, DeleteExtra, DryRun, DstAuthUser, DstPwFile, DstToken, Debug, IncludeDeleted,
    Insecure, NoSyncFlags, Quiet, Report, ResetState, RetryFailed, SrcAuthUser, SrcPwFile, SrcToken, State,
    Workers, connectors, setup_logging,
)
from migrator.engine.copy import EngineOptions
from migrator.errors import EXIT_MESSAGES_FAILED
from migrator.plan import Plan


@app.command()
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
    src_password_file: SrcPwFile = None,
    dst_password_file: DstPwFile = None,
    ca_file: CaFile = None,
    insecure: Insecure = False,
    allow_plaintext: AllowPlain = False,
    src_auth_user: SrcAuthUser = None,
    dst_auth_user: DstAuthUser = None,
    src_oauth2_token_cmd: SrcToken = None,
    dst_oauth2_token_cmd: DstToken = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Copy every folder and message from SOURCE to DESTINATION (plan + run in one step)."""
    from migrator import runner

    setup_logging(debug)
    src, dst = connectors(
        source, destination, src_password_file=src_password_file, dst_password_file=dst_password_file,
        ca_file=ca_file, insecure=insecure, allow_plaintext=allow_plaintext, src_auth_user=src_auth_user,
        dst_auth_user=dst_auth_user, src_token_cmd=src_oauth2_token_cmd, dst_token_cmd=dst_oauth2_token_cmd,
    )
    plan = Plan(src.endpoint, dst.endpoint, source_secret=src.secret.describe(), destination_secret=dst.secret.describe())
    runner.require_network(plan)
    plan = runner.build_plan(plan, src, dst)
    opts = EngineOptions(
        workers=workers, dry_run=dry_run, include_deleted=include_deleted, sync_flags=not no_sync_flags,
        delete_extra=delete_extra, retry_failed=retry_failed, batch_bytes=int(batch_mb * 1e6),
    )
    settings = runner.RunSettings(opts, state_path=state, reset_state=reset_state, report_path=report, quiet=quiet)
    result = runner.execute(plan, src, dst, settings, command="migrate")
    finish_run(result)


@app.command(name="verify")
def verify_cmd(
    source: Annotated[str, typer.Argument(help="Source account URL")],
    destination: Annotated[str, typer.Argument(help="Destination account URL")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    report: Report = None,
    include_deleted: IncludeDeleted = False,
    src_password_file: SrcPwFile = None,
    dst_password_file: DstPwFile = None,
    ca_file: CaFile = None,
    insecure: Insecure = False,
    allow_plaintext: AllowPlain = False,
    src_auth_user: SrcAuthUser = None,
    dst_auth_user: DstAuthUser = None,
    src_oauth2_token_cmd: SrcToken = None,
    dst_oauth2_token_cmd: DstToken = None,
    debug: Debug = False,
) -> None:
    """Compare SOURCE and DESTINATION message by message (bytes, flags, dates). Read-only; exit 0 only if identical."""
    from migrator import runner

    setup_logging(debug)
    src, dst = connectors(
        source, destination, src_password_file=src_password_file, dst_password_file=dst_password_file,
        ca_file=ca_file, insecure=insecure, allow_plaintext=allow_plaintext, src_auth_user=src_auth_user,
        dst_auth_user=dst_auth_user, src_token_cmd=src_oauth2_token_cmd, dst_token_cmd=dst_oauth2_token_cmd,
    )
    plan = Plan(src.endpoint, dst.endpoint)
    runner.require_network(plan)
    plan = runner.build_plan(plan, src, dst)
    result = runner.execute_verify(plan, src, dst, include_deleted, report, as_json)
    if not result["identical"]:
        raise typer.Exit(EXIT_MESSAGES_FAILED)
