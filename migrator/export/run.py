"""An archive exported folder by folder, every message checked before it is written.

The archive is read through the Store contract, as a restore reads it: export_archive() takes
the function that opens it (open_source), so that whatever selects the messages a restore sees
(`archive export --as-of` passes its opener here) selects the same ones for an export.
A damaged message (Message.damage: its frame or SHA-256 failed) is named and skipped; the rest
of its folder is exported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from migrator.errors import StorageError, UsageError
from migrator.export.formats import WRITERS, FolderWriter
from migrator.naming import Folder, display
from migrator.stores.archive import ArchiveStore
from migrator.stores.archive_check import archive_dir
from migrator.stores.base import Store

FETCH_BATCH = 200  # messages per fetch(): bounds memory, whatever the folder's size


@dataclass
class ExportResult:
    out: str
    folders: int = 0
    messages: int = 0
    damaged: list[tuple[str, int, str]] = field(default_factory=list)  # (folder, UID, reason)


def open_archive(directory: str, as_of: str | None = None, identity: str | None = None) -> Store:
    """The archive as a restore reads it (read-only): the latest snapshot, or the one as_of names;
    identity: the age identity file of an encrypted one."""
    return ArchiveStore(archive_dir(directory), create=False, readonly=True, as_of=as_of, identity=identity,
                        reads_bodies=True)


def export_archive(directory: str, fmt: str, out: str, folders: Sequence[Folder] = (),
                   open_source: Callable[[str], Store] = open_archive) -> ExportResult:
    """Every folder (or those named) written to OUT, which must be new or empty."""
    if fmt not in WRITERS:
        raise UsageError(f"unknown export format '{fmt}'")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"{out} exists and is not an empty directory", hint="export into a new directory")
    store = open_source(directory)
    try:
        known = [f.name for f in store.list_folders()]
        missing = [display(f) for f in folders if f not in known]
        if missing:
            raise UsageError(f"no folder {', '.join(missing)} in the archive")
        result = ExportResult(out)
        try:
            for folder in folders or known:
                _export_folder(store, folder, WRITERS[fmt](out, folder), result)
        except OSError as e:
            raise StorageError(f"cannot write to {out}: {e.strerror or e}") from None
        return result
    finally:
        store.close()


def _export_folder(store: Store, folder: Folder, writer: FolderWriter, result: ExportResult) -> None:
    try:
        store.select(folder)
        uids = [m.uid for m in store.list_messages()]
        for start in range(0, len(uids), FETCH_BATCH):
            for msg in store.fetch(uids[start:start + FETCH_BATCH]):
                if msg.damage:  # never written anywhere
                    result.damaged.append((display(folder), msg.meta.uid, msg.damage))
                    continue
                writer.write(msg.meta, msg.body)
                result.messages += 1
        result.folders += 1
    finally:
        writer.close()


def render_export(result: ExportResult, fmt: str) -> str:
    lines = [f"DAMAGED {folder} UID {uid}: {reason} (not exported)" for folder, uid, reason in result.damaged]
    folders = f"{result.folders} folder" + ("" if result.folders == 1 else "s")
    summary = f"{result.messages} messages in {folders} exported to {result.out} ({fmt})"
    if result.damaged:
        summary += f"; {len(result.damaged)} damaged, not exported (see `migrator archive check`)"
    lines.append(summary + ".")
    return "\n".join(lines)
