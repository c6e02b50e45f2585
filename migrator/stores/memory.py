"""In-memory store: the required core of base.Store with a server's semantics, and no I/O.

For tests of the engine and of the Store contract (tests/stores/). A MemoryServer holds the folders
and is shared, thread-safe: any number of MemoryStores (connections, one per worker) talk to it at
once, each with its own selection state, as an IMAP session has.

What it keeps as a server does: UIDVALIDITY per folder (a folder deleted and created again gets a
new one, none is ever given twice), UIDNEXT (UIDs strictly increasing, never reused), flags and
keywords (\\Recent is never stored; system flags in their canonical case), INTERNALDATE exactly as
given, HIGHESTMODSEQ when `condstore`. Options: `uidplus` (APPENDUID: append() returns UIDs, else
[None, ...]), `multiappend` (one all-or-nothing APPEND per batch, else one APPEND per message, as
ImapStore sends them), `keywords` (False: refused as GNU imap4d refuses them, with the exception
ImapStore raises for that answer), `separator`, `late_commits`; what limits() tells (the preflight):
`append_limit` (APPENDLIMIT: a larger APPEND is refused with [TOOBIG]), `permanent_flags`, `quota`
((bytes used, bytes allowed), told only: not enforced). Each connection counts the calls the
server refused (`session_errors`: what an IMAP server answers NO/BAD); `error_budget=N` closes a
connection at its Nth, as Microsoft 365 closes a session after 10 errors (`closed_on_errors`
counts them). Flags as Microsoft 365 keeps them: `append_drops` (flags an APPEND loses: its
`\\Flagged`; a STORE sets them), `append_adds` (body -> flags the server adds to a message it
stores: its `$MDNSent`).

Faults a test injects on the server (each applies to every connection; `match` is a predicate on a
message's bytes, None: any; `times`: how many times it applies, None: always):

- refuse_appends(match, times, text): an APPEND answered NO: MessageRejected, nothing stored (a
  MULTIAPPEND batch as a whole, RFC 3502); Throttled when `text` is a throttle answer (Microsoft
  365's "Request is throttled. Suggested Backoff Time: N ms", [THROTTLED], [UNAVAILABLE]);
- drop_connection(method, nth, commit): the nth call (server-wide) of a store method loses its
  connection: TransientError, then every call on that store raises it too. commit=True: the call
  took effect first (the answer was lost);
- rewrite(fn): every APPENDed body is stored as fn(body); `munge8bit` is Cyrus's same-size change;
- redate(fn): every APPENDed INTERNALDATE is stored as fn(date), while the session that stored it
  goes on listing the date it gave, and so does the first listing of it by any other session
  (`time_t_wrap`: what Dovecot 2.3's Maildir does to a date before 1970, as measured);
- lose_appends(match, times): APPEND answers OK (with UIDs under uidplus) and stores nothing;
- hold_appends(match, times): the connection is lost during the APPEND (TransientError) and the
  messages land only when the test calls land(): an APPEND in flight at a crash.
"""

from __future__ import annotations

import copy
import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from migrator.errors import FolderError, MessageRejected, Throttled, TransientError
from migrator.naming import INBOX, Folder, display, from_server, parents, to_server
from migrator.stores import base
from migrator.stores.base import AppendItem, Capabilities, FolderInfo, FolderStatus, Message, MessageMeta
from migrator.throttle import is_throttle

HOST = "memory"
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")}
DATE_FORMAT = "%d-%b-%Y %H:%M:%S %z"
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def time_t_wrap(date: str) -> str:
    """A date before 1970 as a 32-bit unsigned time_t keeps it: 2**32 seconds later."""
    dt = datetime.strptime(date, DATE_FORMAT)
    return (dt + timedelta(seconds=2**32) if dt.timestamp() < 0 else dt).strftime(DATE_FORMAT)


def munge8bit(body: bytes) -> bytes:
    """Cyrus's munge8bit: each 8-bit octet of the header section replaced by 'X' (same size)."""
    end = _HEADER_END.search(body)
    cut = end.start() if end else len(body)
    return re.sub(rb"[\x80-\xff]", b"X", body[:cut]) + body[cut:]


@dataclass
class _Stored:
    body: bytes
    flags: frozenset[str]
    internaldate: str
    modseq: int


@dataclass
class _Box:
    uidvalidity: int
    uidnext: int = 1
    messages: dict[int, _Stored] = field(default_factory=dict)  # in UID order
    subscribed: bool = False
    special_use: str | None = None
    modseq: int = 1

    def add(self, body: bytes, flags: frozenset[str], date: str) -> int:
        uid, self.uidnext = self.uidnext, self.uidnext + 1
        self.modseq += 1
        self.messages[uid] = _Stored(body, flags, date, self.modseq)
        return uid


@dataclass
class _Fault:
    kind: str  # refuse, lose, hold, drop
    match: Callable[[bytes], bool] | None = None
    times: int | None = None
    method: str = ""
    nth: int = 0
    commit: bool = False
    text: str = ""

    def take(self) -> bool:
        """Whether it applies once more (and count it)."""
        if self.times is not None:
            if self.times <= 0:
                return False
            self.times -= 1
        return True


class MemoryServer:
    """The folders and messages all connections share; also the test's handle for seeding,
    looking and injecting faults."""

    def __init__(self, uidplus: bool = True, multiappend: bool = True, condstore: bool = True,
                 keywords: bool = True, separator: str | None = "/", late_commits: bool = False,
                 first_uidvalidity: int = 1000, now: str = "01-Jan-2020 00:00:00 +0000",
                 append_limit: int | None = None, permanent_flags: tuple[str, ...] | None = None,
                 quota: tuple[int, int] | None = None, error_budget: int = 0, append_drops: Iterable[str] = (),
                 append_adds: Callable[[bytes], Iterable[str]] | None = None):
        self.uidplus, self.multiappend, self.condstore = uidplus, multiappend, condstore
        self.error_budget, self.closed_on_errors = error_budget, 0
        self.append_drops, self.append_adds = _canonical(append_drops), append_adds
        self.append_limit, self.permanent_flags, self.quota = append_limit, permanent_flags, quota
        self.keywords, self.separator, self.late_commits = keywords, separator, late_commits
        self.now = now  # the INTERNALDATE of an APPEND that gives none
        self.lock = threading.RLock()
        self._uidvalidity = first_uidvalidity  # the next one given: none is given twice
        self._boxes: dict[str, _Box] = {"INBOX": _Box(self._new_uidvalidity(), subscribed=True)}
        self._faults: list[_Fault] = []
        self._calls: dict[str, int] = {}
        self._held: list[tuple[_Box, list[tuple[bytes, frozenset[str], str]]]] = []
        self.rewriter: Callable[[bytes], bytes] | None = None
        self.redater: Callable[[str], str] | None = None
        self._cached: dict[tuple[int, int], str] = {}  # (UIDVALIDITY, UID) -> date given, not listed yet

    def connect(self) -> MemoryStore:
        return MemoryStore(self)

    def _new_uidvalidity(self) -> int:
        self._uidvalidity += 1
        return self._uidvalidity - 1

    def copy(self) -> MemoryServer:
        """The server as it is now (folders, messages, held APPENDs, its rewriter: a server's setting),
        without the injected faults and call counts: what a kill -9 of the client leaves, for the
        run that follows it."""
        with self.lock:
            other = copy.copy(self)
            other.lock = threading.RLock()
            other._boxes, other._held = copy.deepcopy((self._boxes, self._held))
            other._faults, other._calls = [], {}
            other._cached = dict(self._cached)
            return other

    # -- faults ----------------------------------------------------------------------------

    def refuse_appends(self, match=None, times: int | None = None, text: str = "APPEND [PARSE] refused") -> None:
        self._add(_Fault("refuse", match, times, text=text))

    def lose_appends(self, match=None, times: int | None = None) -> None:
        self._add(_Fault("lose", match, times))

    def hold_appends(self, match=None, times: int | None = None) -> None:
        self._add(_Fault("hold", match, times))

    def drop_connection(self, method: str, nth: int = 1, commit: bool = False) -> None:
        """nth counts the calls of `method` on all connections, from the server's start."""
        self._add(_Fault("drop", method=method, nth=nth, commit=commit))

    def _add(self, fault: _Fault) -> None:
        with self.lock:
            self._faults.append(fault)

    def rewrite(self, fn: Callable[[bytes], bytes] | None) -> None:
        self.rewriter = fn

    def redate(self, fn: Callable[[str], str] | None) -> None:
        self.redater = fn

    def clear_faults(self) -> None:
        """Remove the injected faults (the rewriter stays: it is a setting of the server)."""
        with self.lock:
            self._faults.clear()

    def land(self) -> int:
        """Commit the held APPENDs (hold_appends) now; returns how many messages landed."""
        with self.lock:
            held, self._held = self._held, []
            for box, messages in held:
                for body, flags, date in messages:
                    box.add(body, flags, date)
            return sum(len(m) for _b, m in held)

    def _append_fault(self, kinds: tuple[str, ...], bodies: Sequence[bytes]) -> _Fault | None:
        for f in self._faults:
            if f.kind in kinds and any(f.match is None or f.match(b) for b in bodies) and f.take():
                return f
        return None

    def calls_of(self, method: str) -> int:
        """How many times a store method was called on this server, by every connection."""
        with self.lock:
            return self._calls.get(method, 0)

    def _drop_at(self, method: str) -> _Fault | None:
        with self.lock:
            n = self._calls[method] = self._calls.get(method, 0) + 1
            return next((f for f in self._faults if f.kind == "drop" and f.method == method and f.nth == n), None)

    # -- folders, from outside --------------------------------------------------------------

    def key(self, name: Folder) -> str:
        return to_server(name, self.separator)

    def box(self, name: Folder) -> _Box:
        with self.lock:
            box = self._boxes.get(self.key(name))
        if box is None:
            raise FolderError(f"folder '{display(name)}' does not exist on {HOST}")
        return box

    def create(self, name: Folder, special_use: str | None = None) -> None:
        with self.lock:
            for level in [*parents(name), name]:
                if self.key(level) not in self._boxes:
                    self._boxes[self.key(level)] = _Box(self._new_uidvalidity())
            if special_use:
                self._boxes[self.key(name)].special_use = special_use

    def delete_folder(self, name: Folder) -> None:
        with self.lock:
            self._boxes.pop(self.key(name), None)

    def names(self) -> list[Folder]:
        with self.lock:
            return [from_server(k, self.separator) for k in self._boxes]

    def deliver(self, name: Folder, body: bytes, flags: Iterable[str] = (), internaldate: str = "") -> int:
        """Seed a message (as a delivery agent would: no fault applies); the folder is created."""
        self.create(name)
        with self.lock:
            return self.box(name).add(body, _canonical(flags), internaldate or self.now)

    def change_flags(self, name: Folder, uid: int, flags: Iterable[str]) -> None:
        """Set a message's flags from outside (another client), its MODSEQ raised as a STORE would."""
        with self.lock:
            box = self.box(name)
            box.modseq += 1
            box.messages[uid].flags, box.messages[uid].modseq = _canonical(flags), box.modseq

    def contents(self, name: Folder) -> dict[int, tuple[bytes, tuple[str, ...], str]]:
        """UID -> (bytes, sorted flags, INTERNALDATE) of a folder, as stored."""
        with self.lock:
            return {uid: (m.body, tuple(sorted(m.flags)), m.internaldate) for uid, m in self.box(name).messages.items()}


def _canonical(flags: Iterable[str]) -> frozenset[str]:
    """System flags in their canonical case, \\Recent left out (it is session state)."""
    out = {SYSTEM_FLAGS.get(f.lower(), f) for f in flags}
    return frozenset(out - base.NON_COPYABLE_FLAGS)


def _call(fn):
    """A store method as a network call: refused on a lost connection, and where a drop_connection
    fault is set, the call that loses it."""

    @functools.wraps(fn)
    def call(self: MemoryStore, *args, **kwargs):
        if self._lost:
            raise TransientError(f"connection to {HOST} lost before {fn.__name__}: it was lost earlier")
        drop = self.server._drop_at(fn.__name__)
        if drop is None:
            try:
                return fn(self, *args, **kwargs)
            except (MessageRejected, FolderError, Throttled):  # answered NO/BAD
                self._refused()
                raise
        if drop.commit:
            fn(self, *args, **kwargs)
        self._lost = True
        raise TransientError(f"connection to {HOST} lost during {fn.__name__}")

    return call


class MemoryStore:
    """One connection to a MemoryServer. Not thread-safe (like every store); the server is."""

    prefix = ""

    def __init__(self, server: MemoryServer):
        self.server = server
        self.separator = server.separator
        self.capabilities = Capabilities(multiappend=server.multiappend, uidplus=server.uidplus,
                                         condstore=server.condstore, special_use=True, keywords=server.keywords,
                                         late_commits=server.late_commits, max_append_size=server.append_limit)
        self._selected: tuple[Folder, _Box, bool] | None = None  # name, the folder then, read-only
        self._given: dict[tuple[int, int], str] = {}  # (UIDVALIDITY, UID) -> date given (redate)
        self._lost = False
        self.session_errors = 0  # calls refused (NO/BAD) on this connection

    def _refused(self) -> None:
        """One more refusal on this connection; at the server's error_budget it is closed (a BYE)."""
        self.session_errors += 1
        s = self.server
        if s.error_budget and self.session_errors >= s.error_budget and not self._lost:
            self._lost = True
            with s.lock:
                s.closed_on_errors += 1

    # -- folders ---------------------------------------------------------------------------

    @_call
    def list_folders(self) -> list[FolderInfo]:
        s = self.server
        with s.lock:
            boxes = [(from_server(k, s.separator), k, b) for k, b in s._boxes.items()]
        out = [FolderInfo(name, key, frozenset([b.special_use] if b.special_use else []), b.special_use, b.subscribed)
               for name, key, b in boxes]
        return sorted(out, key=lambda f: (f.name != INBOX, f.name))

    @_call
    def create_folder(self, name: Folder, special_use: str | None = None) -> None:
        if not all(name):
            raise FolderError(f"CREATE '{display(name)}' failed on {HOST}: empty level")
        self.server.create(name, special_use)

    @_call
    def subscribe(self, name: Folder) -> None:
        with self.server.lock:
            self.server.box(name).subscribed = True

    @_call
    def status(self, name: Folder) -> FolderStatus:
        return self._status(self.server.box(name))

    def _status(self, box: _Box) -> FolderStatus:
        with self.server.lock:
            return FolderStatus(uidvalidity=box.uidvalidity, uidnext=box.uidnext, messages=len(box.messages),
                                size=sum(len(m.body) for m in box.messages.values()),
                                highestmodseq=box.modseq if self.server.condstore else None)

    @_call
    def select(self, name: Folder, readonly: bool = True) -> FolderStatus:
        self._selected = None
        box = self.server.box(name)
        self._selected = (name, box, readonly)
        return self._status(box)

    def _box(self, write: bool = False) -> _Box:
        """The selected folder; FolderError if none is, if it was deleted since, or (write) if it
        was opened read-only."""
        if self._selected is None:
            raise FolderError(f"no folder selected on {HOST}")
        name, box, readonly = self._selected
        with self.server.lock:
            if self.server._boxes.get(self.server.key(name)) is not box:
                raise FolderError(f"folder '{display(name)}' was deleted on {HOST}")
        if write and readonly:
            raise FolderError(f"folder '{display(name)}' is selected read-only on {HOST}")
        return box

    # -- messages --------------------------------------------------------------------------

    @_call
    def list_messages(self, uids: Sequence[int] | None = None) -> list[MessageMeta]:
        box = self._box()
        with self.server.lock:
            wanted = sorted(set(uids)) if uids is not None else list(box.messages)
            return [MessageMeta(uid, len(m.body), tuple(sorted(m.flags)), self._date(box, uid, m))
                    for uid in wanted if (m := box.messages.get(uid)) is not None]

    def _date(self, box: _Box, uid: int, m: _Stored) -> str:
        key = (box.uidvalidity, uid)
        return self._given.get(key) or self.server._cached.pop(key, m.internaldate)

    @_call
    def fetch(self, uids: Sequence[int]) -> Iterator[Message]:
        box = self._box()
        with self.server.lock:
            return iter([Message(MessageMeta(uid, len(m.body), tuple(sorted(m.flags)), self._date(box, uid, m)),
                                 m.body) for uid in uids if (m := box.messages.get(uid)) is not None])

    @_call
    def append(self, name: Folder, items: Sequence[AppendItem]) -> list[int | None]:
        if len(items) > 1 and not self.server.multiappend:  # one APPEND a message, as ImapStore sends
            out: list[int | None] = []
            for item in items:
                try:
                    out.extend(self._append_one(name, [item]))
                except (MessageRejected, Throttled) as e:
                    e.stored = out  # those before it are stored (base.Store.append)
                    raise
            return out
        return self._append_one(name, items)

    def _append_one(self, name: Folder, items: Sequence[AppendItem]) -> list[int | None]:
        """One APPEND command (MULTIAPPEND when it has several items): all stored, or none."""
        s = self.server
        messages = [self._checked(item) for item in items]
        with s.lock:
            box = s._boxes.get(s.key(name))
            if box is None:
                raise FolderError(f"destination folder '{display(name)}' does not exist: APPEND [TRYCREATE]")
            if s.append_limit is not None and any(len(item.body) > s.append_limit for item in items):
                raise MessageRejected(f"APPEND [TOOBIG] over the APPENDLIMIT of {s.append_limit} bytes")
            fault = s._append_fault(("refuse", "hold"), [item.body for item in items])  # the whole command
            if fault is not None and fault.kind == "refuse":
                raise (Throttled if is_throttle(fault.text) else MessageRejected)(fault.text)
            if fault is not None:  # held: in flight until land()
                s._held.append((box, messages))
                self._lost = True
                raise TransientError(f"connection to {HOST} lost during APPEND to '{display(name)}'")
            uids: list[int | None] = []
            for item, message in zip(items, messages, strict=True):
                if s._append_fault(("lose",), [item.body]) is None:
                    uids.append(box.add(*message))
                    if s.redater:  # the date given is shown, as told above
                        key = (box.uidvalidity, box.uidnext - 1)
                        self._given[key] = s._cached[key] = item.internaldate or s.now
                else:  # answered OK (its UID taken), not stored
                    uids.append(box.uidnext)
                    box.uidnext += 1
        return uids if s.uidplus else [None] * len(items)

    def _checked(self, item: AppendItem) -> tuple[bytes, frozenset[str], str]:
        """What an APPEND stores of an item, or the server's refusal (unknown flags, a bad date)."""
        refused = self._refused_flag(item.flags)
        if refused:
            raise MessageRejected(f"APPEND {refused}")
        date = item.internaldate or self.server.now
        try:
            datetime.strptime(date, DATE_FORMAT)
        except ValueError:
            raise MessageRejected(f"APPEND Invalid date-time {date!r}") from None
        s = self.server
        body = s.rewriter(item.body) if s.rewriter else item.body
        flags = (_canonical(item.flags) - s.append_drops) | _canonical(s.append_adds(body) if s.append_adds else ())
        return body, flags, s.redater(date) if s.redater else date

    def _refused_flag(self, flags: Iterable[str]) -> str | None:
        """Why a server refuses these flags (BAD), or None: \\Recent (no client sets it), an
        unknown system flag, a keyword where the server takes none."""
        for f in flags:
            if f.startswith("\\") and (f.lower() == "\\recent" or f.lower() not in SYSTEM_FLAGS):
                return f"Invalid system flag {f}"
            if not f.startswith("\\") and not self.server.keywords:
                return "Unrecognized flag"
        return None

    @_call
    def set_flags(self, uid: int, add: Iterable[str], remove: Iterable[str]) -> None:
        box = self._box(write=True)
        add, remove = list(add), list(remove)
        refused = self._refused_flag(add + remove)
        if refused:
            raise FolderError(f"UID STORE failed on {HOST}: STORE {refused}")
        add, remove = _canonical(add), _canonical(remove)
        with self.server.lock:
            m = box.messages.get(uid)
            if m is not None and (m.flags | add) - remove != m.flags:
                box.modseq += 1
                m.flags, m.modseq = (m.flags | add) - remove, box.modseq

    @_call
    def expunge_uids(self, uids: Sequence[int]) -> None:
        box = self._box(write=True)
        with self.server.lock:
            for uid in uids:
                if box.messages.pop(uid, None) is not None:
                    box.modseq += 1

    def limits(self, folders: Sequence[Folder]) -> base.Limits:
        s = self.server
        return base.Limits(append_limit=s.append_limit, permanent_flags=s.permanent_flags, quota=s.quota)

    def close(self) -> None:
        self._selected = None
        self._lost = True
