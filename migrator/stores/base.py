"""The Store interface: what the engine needs from any end of a copy.

One engine, several endpoints (like mbsync's driver.h or rclone's Fs): IMAP,
POP3 (read-only, one folder) and the local archive all implement this. The
engine never knows which one it talks to; it asks `capabilities` for optional
features and falls back when they are missing.

A Store object is one connection: not thread-safe. Each worker opens its own
through a StoreFactory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from migrator.errors import FolderError
from migrator.naming import Folder

# Flags the engine never copies: \Recent is session state, not message state.
NON_COPYABLE_FLAGS = frozenset({"\\Recent"})


@dataclass(frozen=True)
class FolderInfo:
    name: Folder
    server_name: str  # as the server spells it (decoded from modified UTF-7)
    attributes: frozenset[str] = frozenset()  # \Noselect, \HasChildren, \Sent ...
    special_use: str | None = None  # RFC 6154 attribute, e.g. "\\Sent"
    subscribed: bool = False

    @property
    def selectable(self) -> bool:
        lowered = {a.lower() for a in self.attributes}
        return "\\noselect" not in lowered and "\\nonexistent" not in lowered


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int = 0
    messages: int = 0
    size: int | None = None  # total bytes, when the store can say cheaply
    highestmodseq: int | None = None


@dataclass(frozen=True)
class MessageMeta:
    uid: int
    size: int
    flags: tuple[str, ...]  # sorted, without \Recent
    # IMAP date-time string "dd-Mon-yyyy hh:mm:ss +zzzz", timezone kept; '' when unknown. A store
    # that tells the date from the bytes only (POP3) leaves it '' in its listing: fetch() gives it.
    internaldate: str
    # The same message in every folder of the account (Gmail's X-GM-MSGID); None: not known. A
    # message under several Gmail labels is one message: the engine downloads it once (docs/engine.md).
    identity: str | None = None
    # The other folders of the account that show this message (Gmail: the folders of its labels)
    also_in: tuple[Folder, ...] = ()

    @property
    def deleted(self) -> bool:
        return "\\Deleted" in self.flags


@dataclass(frozen=True)
class Message:
    """One message as fetch() serves it: its bytes and its complete metadata, read together."""

    meta: MessageMeta
    body: bytes
    # True when the body is known to hold no NUL octet: read from an IMAP literal, which cannot
    # carry one (RFC 3501 CHAR8; a server sends NUL only in a BINARY literal8). A destination then
    # need not scan it to choose between a literal and a literal8.
    nul_free: bool = False
    note: str | None = None  # what the store could not vouch for in these bytes, for the report
    # Why these bytes cannot be trusted: the store's own check of them failed (an archive's frame
    # that does not decode, a SHA-256 that does not match). The body is then empty and is never
    # used: the engine reports the message as failed with this reason and copies nothing of it.
    damage: str | None = None


@dataclass(frozen=True)
class Checked:
    """list_with_status() of a folder: the listed messages, its STATUS (None if that failed) and
    the bodies read back. Within a bigger call (check_then_open) a refused listing is given as its
    reason instead of raised, so the rest of the call still counts."""

    metas: list[MessageMeta]
    status: FolderStatus | None
    refused: str | None = None
    bodies: dict[int, bytes] = field(default_factory=dict)
    # A Fingerprinted store's read-back: the SHA-256 of each message, in place of its bytes.
    digests: dict[int, str] = field(default_factory=dict)


# What opening a folder within a bigger call gives: (status, listing), or why it failed.
Opened = tuple[FolderStatus, list[MessageMeta]] | FolderError


@dataclass(frozen=True)
class AppendItem:
    body: bytes
    flags: tuple[str, ...]
    internaldate: str
    nul_free: bool = False  # as Message.nul_free


@dataclass
class Capabilities:
    writable: bool = True
    multiappend: bool = False
    uidplus: bool = False
    condstore: bool = False
    special_use: bool = False
    keywords: bool = True  # can store arbitrary keywords ($Label1, NonJunk ...)
    # The listing's sizes are the sizes of the bytes fetch() returns. A store whose listing only
    # estimates them (POP3's LIST) says False: the engine then never matches a listed size.
    exact_sizes: bool = True
    # The listing gives each message's INTERNALDATE. A store that tells the date from the bytes
    # only (POP3) says False: date filters cannot be applied to its listing.
    dated_listings: bool = True
    # An open session sees mail that arrives after it began. False: POP3 (RFC 1939: the maildrop is
    # fixed for the session) and an archive read (one read transaction): --follow is refused.
    live: bool = True
    # fetch() serves the messages' bytes. False: an encrypted archive opened without its identity,
    # whose fingerprints() still answer (verify compares those: engine/verify.py).
    bodies: bool = True
    # An APPEND sent before a crash or a cut connection may be committed after it (a server at the
    # other end of a network reads what was sent whenever it gets it): the march waits for it
    # (engine/sync.py), and removes a copy sent again if the first one lands (engine/matching.py).
    late_commits: bool = False
    # The store implements Pipelined: it sends many calls in one round trip. Without it,
    # stores.calls makes the same calls one after the other from the core.
    pipelined: bool = False
    # The store keeps what it held before (History: the archive's snapshots). expunge_uids() takes
    # messages out of its latest state only, so a run into it mirrors the source (--delete-extra
    # by default: runner.py), and verify lists what it keeps of mail deleted on the source apart.
    keeps_history: bool = False
    # How many sessions may be open at once (POP3 servers lock the maildrop: 1); None: no limit.
    sessions: int | None = None
    max_append_size: int | None = None
    # The store implements CopyWithin: a message it holds is copied to another of its folders
    # without being sent again (IMAP COPY). Without it, the engine APPENDs the source's bytes.
    copy: bool = False
    # The listing gives MessageMeta.identity and also_in (a Gmail account: one message, many labels)
    identities: bool = False
    # One message shows in many folders at once, a folder added by a label STORE (Gmail's
    # X-GM-LABELS): CopyWithin.copy labels rather than copies, and an APPEND of a message the store
    # holds already stores nothing new (its UID names the copy held). The engine then keys messages
    # by their SHA-256 (within.py label_known) and never uploads one twice.
    labels: bool = False
    # How the store can tell changes as they happen (follow mode, engine/follow.py): "notify" (one
    # connection watches every folder, RFC 5465), "idle" (one connection per folder, RFC 2177), or
    # None (the follower polls STATUS). A store with one implements Watchable.
    watch: str | None = None
    # The store keeps each message's SHA-256 (digest.fingerprint) and its bytes exactly as given
    # (it never alters a copy): Fingerprinted.fingerprints() tells them without serving the bodies
    # (an encrypted archive, which a backup writes without the key that reads it). The engine then
    # reads no destination body to find its copies again (engine/readback.py stored_digests).
    fingerprints: bool = False
    extra: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Limits:
    """What a destination says, read-only, about what it will refuse or change (the plan's
    preflight, migrator/preflight.py). None: it does not say."""

    append_limit: int | None = None  # the largest message it takes (APPENDLIMIT=n, RFC 7889)
    folder_append_limits: dict[Folder, int] = field(default_factory=dict)  # STATUS APPENDLIMIT per folder
    # PERMANENTFLAGS of its INBOX: '\\*' in it keeps any keyword; without it, keywords not listed are dropped
    permanent_flags: tuple[str, ...] | None = None
    quota: tuple[int, int] | None = None  # (bytes used, bytes allowed): STORAGE of INBOX's quota root (RFC 9208)


@dataclass(frozen=True)
class Kept:
    """A message a store with history keeps, though the source deleted it: in snapshots before
    `since`, not in the latest one."""

    uid: int
    since: int  # the snapshot (run) that found it gone


def intact(messages: Iterable[Message]) -> Iterator[Message]:
    """The fetched messages whose bytes can be used (not Message.damage): for a reader that only
    compares content (a damaged message then matches nothing)."""
    return (m for m in messages if m.damage is None)


def normalize_flags(flags: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(f for f in flags if f not in NON_COPYABLE_FLAGS))


class Store(Protocol):
    """The required core: one open connection to one end of a copy. Every store implements all of
    it honestly; a read-only store (POP3) raises FolderError from the calls that write.

    Selection state: select() opens a folder for list_messages(), fetch(), set_flags() and
    expunge_uids(); the folder stays selected until the next select(). append() names its folder
    and leaves the selection as it was."""

    capabilities: Capabilities

    @property
    def separator(self) -> str | None:
        """The hierarchy separator folder names are written with; None: flat. Read-only here, so a
        store may declare it as a class constant (the archive's and POP3's None)."""
        ...

    @property
    def session_errors(self) -> int:
        """How many commands of this session the server answered NO or BAD so far: a server that
        closes a session after N of them (Microsoft 365: 10) gets a new session before (the engine's
        Connections). A store without such answers says 0 (a class constant will do)."""
        ...

    def list_folders(self) -> list[FolderInfo]: ...

    def create_folder(self, name: Folder, special_use: str | None = None) -> None:
        """Create a folder (and its parents). special_use is kept by stores that can (the archive)."""
        ...

    def subscribe(self, name: Folder) -> None: ...

    def status(self, name: Folder) -> FolderStatus: ...

    def select(self, name: Folder, readonly: bool = True) -> FolderStatus:
        """Open a folder for the calls below; raises FolderError if it vanished."""
        ...

    def list_messages(self, uids: Sequence[int] | None = None) -> list[MessageMeta]:
        """Metadata of the selected folder's messages: all of them as of the select() (a store
        may use what SELECT answered), or the given UIDs."""
        ...

    def fetch(self, uids: Sequence[int]) -> Iterator[Message]:
        """The given UIDs of the selected folder, exactly as stored, without setting \\Seen; a UID
        no longer there is left out. Each Message.meta is complete, read with the bytes: the uid,
        the size of the bytes served, the flags and the date (IMAP asks FLAGS and INTERNALDATE in
        the same UID FETCH as the body; the archive reads its index; POP3 has no flags and tells
        the date from the bytes, which its listing leaves empty). A caller need not join it to a
        listing. A message the store finds damaged (its own check of the bytes failed: the
        archive's) comes with Message.damage set and an empty body, never with wrong bytes."""
        ...

    def append(self, name: Folder, items: Sequence[AppendItem]) -> list[int | None]:
        """Store messages; returns one entry per item, in order: its new UID where the store can tell
        (UIDPLUS), else None."""
        ...

    def set_flags(self, uid: int, add: Iterable[str], remove: Iterable[str]) -> None:
        """Change one message's flags in the selected folder."""
        ...

    def expunge_uids(self, uids: Sequence[int]) -> None:
        """Remove these messages of the selected folder, and no other (UID EXPUNGE where the
        server has it; a store that cannot be that precise refuses with FolderError)."""
        ...

    def limits(self, folders: Sequence[Folder]) -> Limits:
        """What the store will refuse or change, as far as it says without writing anything:
        APPENDLIMIT (of the store, and of those of `folders` that exist), PERMANENTFLAGS, QUOTA."""
        ...

    def close(self) -> None: ...


class Pipelined(Store, Protocol):
    """Optional capability (Capabilities.pipelined): the calls a network store sends together
    (many folders, or one folder's end and the next one's start) to save round trips. The engine
    reaches them through stores.calls, which falls back on the core for stores without it, so
    each has exactly the meaning of the core calls it stands for."""

    def statuses(self, names: Sequence[Folder]) -> dict[Folder, FolderStatus]:
        """STATUS of many folders; a folder whose STATUS fails is left out of the answer."""
        ...

    def create_folders(self, folders: Sequence[tuple[Folder, str | None]]) -> dict[Folder, str | None]:
        """Create (folder, special_use) pairs in order, parents first; per folder None when
        it was created or already existed, else the server's reason."""
        ...

    def subscribe_folders(self, names: Sequence[Folder]) -> dict[Folder, str | None]:
        """Subscribe folders; per folder None, or the reason it failed."""
        ...

    def select_and_list(self, name: Folder, readonly: bool = True, expect: int | None = None,
                        bodies: bool = False) -> tuple[FolderStatus, list[MessageMeta]]:
        """select(), then list_messages() of all. expect: how many messages the folder's STATUS
        showed, if known (the store may then ask for both in one round trip). bodies: all of them
        will be fetched next (the store may read them in the same round trip)."""
        ...

    def list_with_status(self, name: Folder, uids: Sequence[int], read_back: Sequence[int] = ()) -> Checked:
        """list_messages(uids) of the selected folder `name` (as of now, not of the select()),
        status(name) or None if it failed, and the bodies of read_back as fetch() gives them."""
        ...

    def check_then_open(self, done: Folder, uids: Sequence[int], name: Folder, readonly: bool = True,
                        expect: int | None = None, read_back: Sequence[int] = ()) -> tuple[Checked, Opened]:
        """list_with_status(done, uids, read_back) of the selected folder `done`, then
        select_and_list(name): the end of one folder and the start of the next. Each part's
        failure is returned, not raised, so that the other part's result is not lost: a refused
        listing as Checked.refused, a folder that cannot be opened as its FolderError. A lost
        connection raises (both parts are then to be done again)."""
        ...


class History(Store, Protocol):
    """Optional capability (Capabilities.keeps_history): a store that keeps earlier states."""

    def kept(self, name: Folder) -> list[Kept]:
        """The folder's messages held by an earlier state and not by the latest one."""
        ...

    def retire_folder(self, name: Folder) -> int:
        """The folder (the source no longer has it) and its messages out of the latest state, kept
        in the earlier ones; returns how many messages it held. create_folder() brings it back."""
        ...


class Fingerprinted(Store, Protocol):
    """Optional capability (Capabilities.fingerprints): the SHA-256 of stored messages, unread."""

    def fingerprints(self, uids: Sequence[int]) -> dict[int, str]:
        """{uid: SHA-256 of its bytes} of these messages of the selected folder that the store holds
        intact (a damaged or missing one is left out, as intact() leaves it out of fetch())."""
        ...


class CopyWithin(Store, Protocol):
    """Optional capability (Capabilities.copy): copy messages between two folders of this store."""

    def copy(self, source: Folder, uidvalidity: int, uids: Sequence[int], to: Folder) -> dict[int, int | None] | None:
        """Copy the messages `uids` of folder `source` into `to`: {uid: its new UID, or None where
        the store cannot tell} for those copied (a UID no longer there is left out); None when
        `source` no longer has this UIDVALIDITY (nothing copied). Leaves no folder selected."""
        ...


@dataclass(frozen=True)
class Changes:
    """What a Watch saw: folders whose messages or flags changed; whether the folder list did."""

    folders: frozenset[Folder] = frozenset()
    folder_list: bool = False

    def __bool__(self) -> bool:
        return bool(self.folders) or self.folder_list


class Watch(Protocol):
    """A connection given over to watching: it does nothing else until closed."""

    def changes(self, timeout: float) -> Changes:
        """What changed since the last call, waiting at most timeout seconds for something.
        A lost connection raises TransientError (events may have been missed)."""
        ...

    def close(self) -> None:
        """Stop watching (the connection itself is the caller's to close)."""
        ...


class Watchable(Store, Protocol):
    """Optional (Capabilities.watch set): the store is told of changes as they happen."""

    def watch(self, names: Sequence[Folder] | None) -> Watch:
        """Watch these folders (with "idle": exactly one), or, with None, every folder and the
        folder list itself (with "notify")."""
        ...


StoreFactory = Callable[[], Store]
