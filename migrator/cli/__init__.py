"""Command line: parses, calls runner, prints. The one error boundary is main() here.

Commands live in cmd_*.py modules, each registering on the shared typer app.
"""

from __future__ import annotations

import logging
import signal
import sys

import typer

from migrator.cli.app import app
from migrator.errors import EXIT_INTERRUPTED, EXIT_MESSAGES_FAILED, EXIT_OK, EXIT_USAGE, Interrupted, MigratorError

# Imported for what they do: each registers its commands on app, and --help lists them in this
# order (so not sorted).
# isort: off
from migrator.cli import cmd_migrate  # noqa: F401
from migrator.cli import cmd_plan  # noqa: F401
from migrator.cli import cmd_batch  # noqa: F401
from migrator.cli import cmd_archive  # noqa: F401
# isort: on


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        # standalone_mode=False: click returns the code of typer.Exit instead of exiting.
        result = app(args=argv, standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
    except typer.Exit as e:  # click.exceptions.Exit
        code = e.exit_code
    except MigratorError as e:
        _print_error(e)
        code = e.exit_code
    except KeyboardInterrupt:
        _print_error(Interrupted("interrupted", hint="run the same command again to resume where it stopped"))
        code = EXIT_INTERRUPTED
    except Exception as e:  # click usage errors and anything unexpected
        code = _click_or_bug(e)
    sys.exit(code)


def _print_error(e: MigratorError) -> None:
    msg = f"migrator: error: {e}"
    if e.hint:
        msg += f" ({e.hint})"
    print(msg, file=sys.stderr)


def _click_or_bug(e: Exception) -> int:
    """Typer raises its own copy of click's exceptions (typer._click), so test by shape, not by class."""
    if isinstance(e, typer.Abort):
        _print_error(Interrupted("interrupted", hint="run the same command again to resume where it stopped"))
        return EXIT_INTERRUPTED
    if isinstance(e, typer.Exit):
        return e.exit_code
    if hasattr(e, "format_message"):  # ClickException: bad option, missing argument, out-of-range value
        print(f"migrator: error: {e.format_message()} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger("migrator").debug("unexpected error", exc_info=True)
    print(f"migrator: internal error: {type(e).__name__}: {e} (please report this; rerun with --debug for details)",
          file=sys.stderr)
    return EXIT_MESSAGES_FAILED
