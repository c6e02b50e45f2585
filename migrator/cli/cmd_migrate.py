"""migrate and verify: SOURCE DESTINATION commands (verify also takes a PLAN file)."""

from __future__ import annotations

from typing import Annotated

import typer

from migrator.cli.app import app, finish_run
from migrator.cli.options import (
    ConnOptions,
    Debug,
    EncryptTo,
    EncryptToFile,
    FilterOptions,
    Identity,
    IncludeDeleted,
    MappingOptions,
    MaxConns,
    Quiet,
    Report,
    RunOptions,
    Workers,
    connectors,
    plan_connectors,
    run_settings,
    setup_logging,
    with_connection_options,
    with_encryption,
    with_filter_options,
    with_folder_choice,
    with_mapping_options,
    with_run_options,
)
from migrator.errors import EXIT_MESSAGES_FAILED, UsageError


@app.command()
@with_run_options
@with_connection_options
@with_mapping_options
@with_filter_options
def migrate(
    source: Annotated[str, typer.Argument(help="Source account, e.g. imaps://alice@old.example.com")],
    destination: Annotated[str, typer.Argument(help="Destination account, e.g. imaps://alice@new.example.com")],
    quiet: Quiet = False,
    debug: Debug = False,
    *,
    mapping: MappingOptions,
    conn: ConnOptions,
    run: RunOptions,
    filters: FilterOptions,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", metavar="RUN|DATE",
        help="Restore from an archive as it was then: a snapshot id (`migrator archive ls DIR --runs`) or an "
             "ISO 8601 date or time (2026-12-01: that day's last snapshot; 2026-12-01T08:00:00Z), with the "
             "mail deleted on the source since and the flags it had then.")] = None,
    encrypt_to: EncryptTo = None,
    encrypt_to_file: EncryptToFile = None,
    identity: Identity = None,
) -> None:
    """Copy every folder and message from SOURCE to DESTINATION (plan + run in one step).

    Filters (--since, --before, --min-size, --max-size) leave messages out, reported as skipped; a later run
    without them copies the rest, with no duplicates. Into an archive (archive:///DIR), each run is a snapshot:
    mail deleted on the source leaves the latest snapshot and stays in the earlier ones.

    With --follow, stay connected afterwards and copy what changes on SOURCE until SIGINT/SIGTERM or --follow-for
    (a provider switch's cut-over: bulk pass, MX change, then --follow; see the README).

    Into a new archive, --encrypt-to age1... encrypts it at rest (docs/security.md); a restore from an encrypted
    archive needs --identity FILE."""
    from migrator import runner

    setup_logging(debug)
    src, dst = connectors(source, destination, conn)
    with_encryption(src, dst, encrypt_to, encrypt_to_file, identity)
    if as_of is not None:
        runner.check_as_of(src)
        src.as_of = as_of
    settings = run_settings(src, dst, run, quiet)
    plan, spare = runner.plan_keeping_connections(runner.new_plan(src, dst, filters.parsed(), run.delete_extra),
                                                  src, dst, mapping.planning(), with_status=False)
    result = runner.execute(plan, src, dst, settings, command="migrate", spare=spare)
    finish_run(result)


@app.command(name="verify")
@with_connection_options
@with_folder_choice
@with_filter_options
def verify_cmd(
    source: Annotated[str, typer.Argument(help="Source account URL, or a PLAN file (then no DESTINATION)")],
    destination: Annotated[str | None, typer.Argument(help="Destination account URL")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    report: Report = None,
    include_deleted: IncludeDeleted = False,
    workers: Workers = 4,
    max_connections_per_host: MaxConns = 10,
    debug: Debug = False,
    identity: Identity = None,
    *,
    mapping: MappingOptions,
    conn: ConnOptions,
    filters: FilterOptions,
) -> None:
    """Compare SOURCE and DESTINATION (or the folders of a PLAN) message by message.

    Read-only; exit 0 only if identical. Filters (a PLAN's, or --since/--before/--min-size/--max-size
    as the copy was given them): source messages they leave out are not compared, and their copies
    on the destination are no extras."""
    from migrator import runner, throttle

    setup_logging(debug)
    if destination is None:
        from migrator.plan_io import read_plan

        if "://" in source:
            raise UsageError("verify needs SOURCE and DESTINATION, or one PLAN file")
        if mapping.given or filters != FilterOptions():
            raise UsageError("with a PLAN file, edit the plan instead of giving "
                             "--map/--include/--exclude/--folder/--preset/--dst-preset or filters")
        plan = read_plan(source)
        runner.check_endpoints(plan)
        src, dst = plan_connectors(plan, conn)
        plan.check_collisions()
    else:
        src, dst = connectors(source, destination, conn)
    with_encryption(src, dst, None, None, identity, both=True)
    src.readonly = dst.readonly = True  # an archive is only read: never refused while a backup writes
    # An encrypted destination archive without --identity is compared by the SHA-256s its index
    # keeps (each frame checked as stored): a backup host need not hold the key to verify.
    dst.digests_only = identity is None
    if destination is not None:
        plan = runner.build_plan(runner.new_plan(src, dst, filters.parsed()), src, dst, mapping.planning(),
                                 with_status=False)
    workers = throttle.connection_limits(src, dst, workers, max_connections_per_host)
    result = runner.execute_verify(plan, src, dst, include_deleted, report, as_json, workers=workers)
    if not result["identical"]:
        raise typer.Exit(EXIT_MESSAGES_FAILED)
