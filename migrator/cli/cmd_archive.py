"""archive check DIR [--repair]: an archive checked alone, without its source."""

from __future__ import annotations

from typing import Annotated

import typer

from migrator.cli.app import app
from migrator.errors import EXIT_MESSAGES_FAILED
from migrator.stores.archive_check import check_archive, render_check

archive_app = typer.Typer(
    no_args_is_help=True,
    help="Look after a zstd archive (archive:///DIR) without its source.",
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
