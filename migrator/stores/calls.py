"""The Pipelined calls for any store: the store's own where it advertises Capabilities.pipelined,
else the same calls made one after the other from the required core (base.Store).

The engine, the planner and verify call these, never a store's batch methods directly, so a store
that implements only the core (archive, POP3, memory) is a complete store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from migrator.errors import FolderError
from migrator.naming import Folder
from migrator.stores.base import Checked, Fingerprinted, FolderStatus, MessageMeta, Opened, Pipelined, Store, intact


def _pipelined(store: Store) -> Pipelined | None:
    return cast(Pipelined, store) if store.capabilities.pipelined else None


def statuses(store: Store, names: Sequence[Folder]) -> dict[Folder, FolderStatus]:
    """Pipelined.statuses: a folder whose STATUS fails is left out of the answer."""
    if (p := _pipelined(store)) is not None:
        return p.statuses(names)
    out = {}
    for name in names:
        try:
            out[name] = store.status(name)
        except FolderError:
            continue
    return out


def create_folders(store: Store, folders: Sequence[tuple[Folder, str | None]]) -> dict[Folder, str | None]:
    """Pipelined.create_folders: per folder None, or the reason it was not created."""
    if (p := _pipelined(store)) is not None:
        return p.create_folders(folders)
    return _each(folders, lambda pair: store.create_folder(pair[0], special_use=pair[1]), key=lambda pair: pair[0])


def subscribe_folders(store: Store, names: Sequence[Folder]) -> dict[Folder, str | None]:
    """Pipelined.subscribe_folders: per folder None, or the reason it failed."""
    if (p := _pipelined(store)) is not None:
        return p.subscribe_folders(names)
    return _each(names, store.subscribe, key=lambda name: name)


def _each(items, call, key) -> dict[Folder, str | None]:
    out: dict[Folder, str | None] = {}
    for item in items:
        try:
            call(item)
            out[key(item)] = None
        except FolderError as e:
            out[key(item)] = str(e)
    return out


def select_and_list(store: Store, name: Folder, readonly: bool = True, expect: int | None = None,
                    bodies: bool = False) -> tuple[FolderStatus, list[MessageMeta]]:
    """Pipelined.select_and_list: select(), then list_messages() of all."""
    if (p := _pipelined(store)) is not None:
        return p.select_and_list(name, readonly, expect, bodies)
    status = store.select(name, readonly)
    return status, store.list_messages()


def list_with_status(store: Store, name: Folder, uids: Sequence[int], read_back: Sequence[int] = ()) -> Checked:
    """Pipelined.list_with_status: the listed uids of the selected folder, its status (None if
    that failed) and the bodies of read_back."""
    if (p := _pipelined(store)) is not None:
        return p.list_with_status(name, uids, read_back)
    metas = store.list_messages(uids) if uids else []
    bodies, digests = {}, {}
    if read_back and store.capabilities.fingerprints:  # no body read (an encrypted archive has no key to)
        digests = cast(Fingerprinted, store).fingerprints(read_back)
    elif read_back:
        bodies = {m.meta.uid: m.body for m in intact(store.fetch(read_back))}
    try:
        return Checked(metas, store.status(name), bodies=bodies, digests=digests)
    except FolderError:
        return Checked(metas, None, bodies=bodies, digests=digests)


def check_then_open(store: Store, done: Folder, uids: Sequence[int], name: Folder, readonly: bool = True,
                    expect: int | None = None, read_back: Sequence[int] = ()) -> tuple[Checked, Opened]:
    """Pipelined.check_then_open: each part's FolderError returned, not raised."""
    if (p := _pipelined(store)) is not None:
        return p.check_then_open(done, uids, name, readonly, expect, read_back)
    return check_then_open_in_turn(store, done, uids, name, readonly, expect, read_back)


def check_then_open_in_turn(store: Store, done: Folder, uids: Sequence[int], name: Folder,
                            readonly: bool, expect: int | None,
                            read_back: Sequence[int] = ()) -> tuple[Checked, Opened]:
    """check_then_open made of its two calls, one after the other (also IMAP's own fallback)."""
    try:
        checked = list_with_status(store, done, uids, read_back)
    except FolderError as e:
        checked = Checked([], None, str(e))
    try:
        return checked, select_and_list(store, name, readonly, expect)
    except FolderError as e:
        return checked, e
