"""The typer app and helpers shared by the command modules.

Exit codes (also in --help and the README):
  0  everything copied / identical
  1  some messages or folders failed (listed), or verify found differences
  2  usage or configuration error (bad URL, option, plan or state file)
  3  connection, TLS or authentication failure
  130 interrupted (Ctrl-C / SIGTERM); rerun the same command to resume
"""

from __future__ import annotations

import typer

from migrator import __version__
from migrator.errors import EXIT_MESSAGES_FAILED, Interrupted

EXIT_CODES_HELP = (
    "Exit codes: 0 done (or identical); 1 some messages failed or verify found differences; "
    "2 usage or configuration error; 3 connection, TLS or authentication failure; 130 interrupted (rerun to resume)."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Move and archive mailboxes, byte for byte, resumably.\n\n" + EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def finish_run(result: dict) -> None:
    """Turn a run report into the exit status (the boundary in cli/__init__ prints errors)."""
    if result["interrupted"]:
        raise Interrupted("interrupted", hint="run the same command again to resume where it stopped")
    if not result["ok"]:
        raise typer.Exit(EXIT_MESSAGES_FAILED)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"migrator {__version__}")
