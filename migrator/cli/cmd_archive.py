"""archive check, ls, prune, compact, export: an archive looked after without its source.

check DIR [--repair] [--identity]; ls DIR [--runs] [FOLDER] [--as-of]; prune DIR --keep-*; compact DIR
[--identity]; export DIR OUT --mbox|--maildir|--eml [--folder] [--as-of] [--identity].
"""

from __future__ import annotations

from typing import Annotated

import typer

from migrator.cli.app import app
from migrator.cli.options import Identity
from migrator.errors import EXIT_MESSAGES_FAILED, UsageError
from migrator.export.run import export_archive, open_archive, render_export
from migrator.naming import parse_display
from migrator.stores.archive_check import check_archive, render_check

archive_app = typer.Typer(
    no_args_is_help=True,
    help="Look after a zstd archive (archive:///DIR) without its source: check, ls, prune, compact, export.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(archive_app, name="archive")


@archive_app.command(name="check")
def check_cmd(
    directory: Annotated[str, typer.Argument(help="The archive's directory (or its archive:// URL).")],
    repair: Annotated[bool, typer.Option(
        "--repair", help="Move damaged messages aside (table `damaged`), so that the next backup run "
                         "fetches them again from the source if it still has them.")] = False,
    identity: Identity = None,
) -> None:
    """Check an archive alone: every frame decodes, every message matches its SHA-256, index and data agree.

    Names each damaged message (folder, UID, reason). Reads while a backup runs (the index as it was when it
    started); --repair waits for no one: it is refused while a backup runs.

    An encrypted archive without --identity: each frame is checked against the SHA-256 of its ciphertext (so
    damage is found and named all the same), the messages' contents are not (the summary says so).

    Exit codes: 0 clean; 1 damage found (also when --repair just moved it aside) or a damaged index;
    2 not an archive, in use, or a bad --identity. Messages an earlier --repair set aside do not count as damage.
    """
    result = check_archive(directory, repair=repair, identity=identity)
    typer.echo(render_check(result, repair))
    if not result.clean:
        raise typer.Exit(EXIT_MESSAGES_FAILED)


AS_OF_HELP = ("A snapshot id, or an ISO 8601 date or time (2026-12-01: that day's last snapshot; "
              "2026-12-01T08:00:00Z); default: the latest.")


@archive_app.command(name="ls")
def ls_cmd(
    directory: Annotated[str, typer.Argument(help="The archive's directory (or its archive:// URL).")],
    folder: Annotated[str | None, typer.Argument(help="List this folder's messages (as `ls` shows its name).")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="List the snapshots: id, when, counts.")] = False,
    as_of: Annotated[str | None, typer.Option("--as-of", metavar="RUN|DATE", help=AS_OF_HELP)] = None,
) -> None:
    """List an archive's snapshots (--runs), the folders of one (the latest, or --as-of's), or a folder's messages.

    Read-only, and never refused while a backup writes: it reads the index as it was when it started.
    Exit codes: 0; 2 not an archive, or no such snapshot or folder.
    """
    from migrator.stores.archive_list import list_folders_or_messages, list_runs

    if runs and (folder or as_of):
        raise UsageError("archive ls --runs lists the snapshots: no FOLDER or --as-of with it")
    lines = list_runs(directory) if runs else list_folders_or_messages(directory, folder, as_of)
    typer.echo("\n".join(lines))


@archive_app.command(name="prune")
def prune_cmd(
    directory: Annotated[str, typer.Argument(help="The archive's directory (or its archive:// URL).")],
    keep_last: Annotated[int, typer.Option("--keep-last", help="Keep the N newest snapshots.")] = 0,
    keep_hourly: Annotated[int, typer.Option("--keep-hourly", help="Keep the last snapshot of N hours.")] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily", help="Keep the last snapshot of N days.")] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", help="Keep the last snapshot of N ISO weeks.")] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", help="Keep the last snapshot of N months.")] = 0,
    keep_yearly: Annotated[int, typer.Option("--keep-yearly", help="Keep the last snapshot of N years.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go; change nothing.")] = False,
) -> None:
    """Drop old snapshots, as borg prune does: the rules apply in the order last, hourly, daily, weekly, monthly,
    yearly; each keeps the newest snapshot of each period (local time) no earlier rule kept, up to N (-1: all).

    Unfinished (killed) runs count for no rule; the latest snapshot is always kept. Mail only dropped snapshots
    held leaves the index; `archive compact` then frees its bytes. Refused while a backup runs.
    Exit codes: 0; 2 not an archive, no --keep-* option, or in use.
    """
    from migrator.stores.archive_prune import prune, render_prune

    keep = {"last": keep_last, "hourly": keep_hourly, "daily": keep_daily, "weekly": keep_weekly,
            "monthly": keep_monthly, "yearly": keep_yearly}
    typer.echo(render_prune(prune(directory, keep, dry_run), dry_run))


@archive_app.command(name="compact")
def compact_cmd(
    directory: Annotated[str, typer.Argument(help="The archive's directory (or its archive:// URL).")],
    identity: Identity = None,
) -> None:
    """Free the bytes no snapshot references: rewrite the data files that hold such bytes.

    A frame whose messages are all still referenced is copied as it is; a frame shared by kept and dropped
    messages is regrouped with the kept ones only (each checked against its SHA-256), whichever folders and
    snapshots point into it.
    Crash-safe: new files are written and fsync'ed, the index switched to them in one transaction, then the old
    files deleted; after a kill -9, run it again. Refused while a backup runs. An encrypted archive: shared frames
    are regrouped only with --identity (else copied whole; unreferenced frames are freed either way).
    Exit codes: 0; 1 the disk failed (one line, the archive as it was); 2 not an archive, in use, or a bad --identity.
    """
    from migrator.stores.archive_compact import compact, render_compact

    typer.echo(render_compact(compact(directory, identity), directory))


@archive_app.command(name="export")
def export_cmd(
    directory: Annotated[str, typer.Argument(help="The archive's directory (or its archive:// URL).")],
    out: Annotated[str, typer.Argument(help="A new (or empty) directory to write into.")],
    mbox: Annotated[bool, typer.Option("--mbox", help="One mboxrd file per folder (FOLDER.mbox).")] = False,
    maildir: Annotated[bool, typer.Option("--maildir", help="One maildir per folder (FOLDER/cur).")] = False,
    eml: Annotated[bool, typer.Option("--eml", help="One directory per folder, UID.eml per message.")] = False,
    folder: Annotated[list[str] | None, typer.Option(
        "--folder", help="Export only this folder (as shown: Archive/2020); repeatable.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", metavar="RUN|DATE", help=AS_OF_HELP)] = None,
    identity: Identity = None,
) -> None:
    """Write an archive out as mbox, Maildir or .eml files (tested with mutt and Python's mailbox).

    Every message's SHA-256 is checked first; a damaged one is named and not exported. Maildir and
    .eml files hold exactly the archived bytes, their mtime the INTERNALDATE; Maildir file names
    carry the flags. mbox adds a From_ line (the INTERNALDATE), Status/X-Status/X-Keywords lines
    (the flags; a message's own lines of these names are dropped) and mboxrd quoting
    (docs/archive-format.md, "Export"). Thunderbird was not tested. It reads one snapshot (the
    latest, or --as-of's) as it was when it started, never refused while a backup writes.

    Exit codes: 0 all exported; 1 damaged messages (named, the rest exported) or OUT cannot be
    written; 2 bad options, OUT not empty, not an archive, no such snapshot, in use, or an encrypted archive
    without (or with a wrong) --identity.
    """
    chosen = [name for name, on in (("mbox", mbox), ("maildir", maildir), ("eml", eml)) if on]
    if len(chosen) != 1:
        raise UsageError("choose one format: --mbox, --maildir or --eml")
    result = export_archive(directory, chosen[0], out, [parse_display(f) for f in folder or []],
                            open_source=lambda d: open_archive(d, as_of, identity))
    typer.echo(render_export(result, chosen[0]))
    if result.damaged:
        raise typer.Exit(EXIT_MESSAGES_FAILED)
