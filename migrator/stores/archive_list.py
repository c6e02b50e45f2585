"""`migrator archive ls DIR [--runs] [FOLDER] [--as-of RUN|DATE]`: what an archive holds, read as a
reader (never refused while a backup writes; one consistent snapshot of the index)."""

from __future__ import annotations

from migrator.naming import display, parse_display
from migrator.stores.archive import ArchiveStore
from migrator.stores.archive_check import archive_dir
from migrator.stores.archive_index import ArchiveIndex
from migrator.stores.archive_snapshots import runs, stamp


def list_runs(path: str) -> list[str]:
    arc = ArchiveIndex.open(archive_dir(path), create=False, readonly=True)
    try:
        infos = runs(arc.db)
    finally:
        arc.release()
    lines = ["snapshot  started               finished              messages  new  deleted-on-source  flags-changed"]
    for r in infos:
        finished = stamp(r.finished) if r.finished is not None else "(not finished)"
        lines.append(f"{r.id:>8}  {stamp(r.started)}  {finished:<20}  {r.messages:>8}  {r.added:>3}  "
                     f"{r.removed:>17}  {r.flag_changes:>13}")
    if not infos:
        lines.append("(none yet: no backup run has written to this archive)")
    return lines


def list_folders_or_messages(path: str, folder: str | None, as_of: str | None) -> list[str]:
    """The folders of a snapshot (the latest, or --as-of's), or one folder's messages."""
    store = ArchiveStore(archive_dir(path), create=False, readonly=True, as_of=as_of)
    try:
        if folder is None:
            lines = ["messages       bytes  folder"]
            for info in store.list_folders():
                st = store.status(info.name)
                lines.append(f"{st.messages:>8}  {st.size or 0:>10}  {display(info.name)}")
            return lines
        name = parse_display(folder)
        store.select(name)
        lines = ["     UID       bytes  INTERNALDATE                flags"]
        lines += [f"{m.uid:>8}  {m.size:>10}  {m.internaldate:<26}  {' '.join(m.flags)}"
                  for m in store.list_messages()]
        return lines
    finally:
        store.close()
