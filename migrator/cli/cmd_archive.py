"""archive check DIR [--repair]: an archive checked alone, without its source; archive export DIR OUT."""

from __future__ import annotations

from typing import Annotated

import typer

from migrator.cli.app import app
from migrator.errors import EXIT_MESSAGES_FAILED, UsageError
from migrator.export.run import export_archive, render_export
from migrator.naming import parse_display
from migrator.stores.archive_check import check_archive, render_check

archive_app = typer.Typer(
    no_args_is_help=True,
    help="Check or export a zstd archive (archive:///DIR) without its source.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(archive_app, name="archive")


@archive_app.command(name="check")
def check_cmd(
    directory: Annotated[str, typer.Argument(help="The archive's directory (or its archive:// URL).")],
    repair: Annotated[bool, typer.Option(
        "--repair", help="Move damaged messages aside (table `damaged`), so that the next backup run "
                         "fetches them again from the source if it still has them.")] = False,
) -> None:
    """Check an archive alone: every frame decodes, every message matches its SHA-256, index and data agree.

    Names each damaged message (folder, UID, reason). Refused while a backup or restore runs on it.

    Exit codes: 0 clean; 1 damage found (also when --repair just moved it aside) or a damaged index;
    2 not an archive, or in use. Messages an earlier --repair set aside do not count as damage.
    """
    result = check_archive(directory, repair=repair)
    typer.echo(render_check(result, repair))
    if not result.clean:
        raise typer.Exit(EXIT_MESSAGES_FAILED)


@archive_app.command(name="export")
def export_cmd(
    directory: Annotated[str, typer.Argument(help="The archive's directory (or its archive:// URL).")],
    out: Annotated[str, typer.Argument(help="A new (or empty) directory to write into.")],
    mbox: Annotated[bool, typer.Option("--mbox", help="One mboxrd file per folder (FOLDER.mbox).")] = False,
    maildir: Annotated[bool, typer.Option("--maildir", help="One maildir per folder (FOLDER/cur).")] = False,
    eml: Annotated[bool, typer.Option("--eml", help="One directory per folder, UID.eml per message.")] = False,
    folder: Annotated[list[str] | None, typer.Option(
        "--folder", help="Export only this folder (as shown: Archive/2020); repeatable.")] = None,
) -> None:
    """Write an archive out as mbox, Maildir or .eml files that mutt, Thunderbird and Python's mailbox read.

    Every message's SHA-256 is checked first; a damaged one is named and not exported. Maildir and
    .eml files hold exactly the archived bytes, their mtime the INTERNALDATE; Maildir file names
    carry the flags. mbox adds a From_ line (the INTERNALDATE), Status/X-Status/X-Keywords lines
    (the flags) and mboxrd quoting (docs/archive-format.md, "Export").

    Exit codes: 0 all exported; 1 damaged messages (named, the rest exported) or OUT cannot be
    written; 2 bad options, OUT not empty, not an archive, or in use.
    """
    chosen = [name for name, on in (("mbox", mbox), ("maildir", maildir), ("eml", eml)) if on]
    if len(chosen) != 1:
        raise UsageError("choose one format: --mbox, --maildir or --eml")
    result = export_archive(directory, chosen[0], out, [parse_display(f) for f in folder or []])
    typer.echo(render_export(result, chosen[0]))
    if result.damaged:
        raise typer.Exit(EXIT_MESSAGES_FAILED)
