"""plan SOURCE DESTINATION -> a reviewable TOML file; run PLAN carries it out."""

from __future__ import annotations

import os
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
    MappingOptions,
    Quiet,
    RunOptions,
    connectors,
    plan_connectors,
    run_settings,
    setup_logging,
    with_connection_options,
    with_encryption,
    with_filter_options,
    with_mapping_options,
    with_run_options,
)
from migrator.errors import UsageError
from migrator.naming import display
from migrator.plan import Plan
from migrator.preflight import Finding, render

PLANS_DIR = "plans"


def default_plan_path(plan: Plan) -> str:
    def safe(s: str) -> str:
        return "".join(c if c.isalnum() or c in "._-@" else "_" for c in s)

    return os.path.join(PLANS_DIR, f"{safe(plan.source.user)}@{safe(plan.source.host)}.toml")


@app.command(name="plan")
@with_connection_options
@with_mapping_options
@with_filter_options
def plan_cmd(
    source: Annotated[str, typer.Argument(help="Source account, e.g. imaps://alice@old.example.com")],
    destination: Annotated[str, typer.Argument(help="Destination account, e.g. imaps://alice@new.example.com")],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Plan file to write (default: plans/USER@HOST.toml).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing plan file.")] = False,
    debug: Debug = False,
    identity: Identity = None,
    *,
    mapping: MappingOptions,
    conn: ConnOptions,
    filters: FilterOptions,
) -> None:
    """Write a plan: where each source folder goes, for a person to review and edit. Read-only on both servers.

    Rules, in order. Skipped: --exclude GLOB; not matched by --include GLOB / --folder NAME (NAME/* = subtree);
    a preset's skip (unless asked for by --include/--folder/--map). Destination: --map OLD=NEW (with its
    subfolders); the destination's own special folder for a source special-use folder (\\Sent ...), or, when
    the source marks none, for a localized name (Sent Items, Gesendete Elemente, ...); a preset's rename;
    the same name. Separators and INBOX. prefixes are translated; a name holding the destination's
    separator gets '_' in its place, with a warning. Filters (--since ...) are written into the plan's filters table.
    """
    from migrator import runner
    from migrator.plan_io import write_plan

    setup_logging(debug)
    src, dst = connectors(source, destination, conn)
    with_encryption(src, dst, None, None, identity)
    plan = runner.new_plan(src, dst, filters.parsed())
    path = output or default_plan_path(plan)
    if os.path.exists(path) and not force:
        raise UsageError(f"plan file {path} exists", hint="use --force to overwrite it, or -o another file")
    plan = runner.build_plan(plan, src, dst, mapping.planning(), check=True)
    write_plan(plan, path)
    for fp in plan.folders:
        arrow = f"-> {display(fp.destination)}" if fp.action == "copy" else "(skip)"
        size = f"{fp.messages or 0} msgs" + (f", {fp.size / 1e6:.1f} MB" if fp.size is not None else "")
        typer.echo(f"  {display(fp.source)} {arrow}  [{fp.rule}; {size}]")
    if plan.filters:
        typer.echo(f"  filters: {plan.filters.describe()} (messages left out are reported as skipped)")
    typer.echo("\n".join(render(Finding(**f) for f in plan.preflight)))
    for w in plan.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"Plan written to {path}. Review it, then: migrator run {path} --dry-run")
    # Written even with a collision, so the person can fix it in the file.
    plan.check_collisions()


@app.command(name="run")
@with_run_options
@with_connection_options
def run_cmd(
    plan_file: Annotated[str, typer.Argument(
        metavar="PLAN", help="Plan file written by `migrator plan` (and maybe edited).")],
    quiet: Quiet = False,
    debug: Debug = False,
    encrypt_to: EncryptTo = None,
    encrypt_to_file: EncryptToFile = None,
    identity: Identity = None,
    *,
    conn: ConnOptions,
    run: RunOptions,
) -> None:
    """Carry out a PLAN: create the destination folders and copy the messages (rerun to resume).

    With --follow, stay connected afterwards and copy what changes on the source (new folders by the plan's
    [options]) until SIGINT/SIGTERM or --follow-for. --encrypt-to creates a new destination archive encrypted,
    --identity reads an encrypted source archive (as migrate's)."""
    from migrator import runner
    from migrator.plan_io import read_plan

    setup_logging(debug)
    plan = read_plan(plan_file)
    runner.check_endpoints(plan)
    runner.check_filters(plan, run.delete_extra)
    src, dst = plan_connectors(plan, conn)
    with_encryption(src, dst, encrypt_to, encrypt_to_file, identity)
    vanished = runner.check_plan(plan, src, dst, delete_extra=run.delete_extra)
    settings = run_settings(src, dst, run, quiet)
    result = runner.execute(plan, src, dst, settings, command="run", folder_errors=vanished)
    finish_run(result)
