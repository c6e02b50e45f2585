"""POP3 store: a read-only source with one folder, INBOX.

POP3 has no UIDs, flags or INTERNALDATE, so this store makes what the engine
needs out of what POP3 has:
- UID: a stable 48-bit number derived from the server's UIDL string (RFC 1939
  promises UIDL is stable across sessions), so the checkpoint recognises a
  message on every run; UIDVALIDITY is constant.
- flags: none.
- INTERNALDATE: the date of the newest Received: header (when the message
  reached the mailbox), else the Date: header, else empty (the destination
  then uses its own clock, and verify does not compare that date). It is read
  from the bytes fetch() returns (RETR), so a listing costs UIDL and LIST
  only, never a TOP per message: list_messages() leaves it empty.
- sizes: LIST's are not the sizes of the bytes RETR serves (Dovecot serves a
  message without a final newline with CRLF added; other servers count line
  ends their own way), so the store says so (Capabilities.exact_sizes) and the
  engine never matches a listing size against bytes.
Message bodies are read by this module, not poplib: poplib refuses any line
over 2,048 octets (_MAXLINE), and a message may hold longer lines.
The TLS rule, its warning and the error messages are IMAP's (stores/connection.py): pop3s:// is
TLS from the first byte; pop3:// to a non-loopback host must upgrade with STLS, or log in over
plaintext only with --allow-plaintext.
"""

from __future__ import annotations

import dataclasses
import poplib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn

from migrator.accounts import Endpoint
from migrator.digest import short_digest
from migrator.errors import ConnectionFailed, FolderError
from migrator.imapdate import from_rfc5322
from migrator.naming import INBOX, Folder, display
from migrator.stores.base import AppendItem, Capabilities, FolderInfo, FolderStatus, Limits, Message, MessageMeta
from migrator.stores.connection import (
    ConnectOptions,
    Credentials,
    connect_failed,
    connection_lost,
    server_text,
    stay_plain,
    tls_context,
    upgrade_failed,
)

UIDVALIDITY = 1
_RECEIVED_DATE = re.compile(rb";\s*([^;]*?)\s*$")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def uid_from_uidl(uidl: bytes) -> int:
    return short_digest(uidl) or 1


def date_from_headers(header_bytes: bytes) -> str:
    """Newest Received: date (the first one, by RFC 5321 trace order), else Date:."""
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", header_bytes)
    received = date = None
    for line in unfolded.splitlines():
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"received" and received is None:
            m = _RECEIVED_DATE.search(value)
            if m:
                received = m.group(1).decode("latin-1")
        elif lname == b"date" and date is None:
            date = value.decode("latin-1")
    for candidate in (received, date):
        if candidate:
            text = from_rfc5322(candidate)
            if text:
                return text
    return ""


class _MessageReader(poplib.POP3):
    """poplib's client, with the multi-line answer of RETR read here: lines of any length (poplib's
    _getline refuses lines over 2,048 octets), kept as served, line ends included. Memory is
    bounded by the message, which is held whole anyway. The one-line answers (+OK, UIDL and LIST
    lines) are still poplib's, under its limit: RFC 1939 keeps them short."""

    def retr_bytes(self, which: int) -> bytes:
        """The message as the server sends it after RETR, dot-unstuffed, without the final '.' line."""
        self._putcmd(f"RETR {which}")  # type: ignore[attr-defined]  # poplib's private helpers, not in typeshed
        self._getresp()  # type: ignore[attr-defined]  # poplib's private helpers, not in typeshed; error_proto on -ERR
        return read_multiline(self.file)


class _Pop3(_MessageReader):
    pass


class _Pop3Tls(_MessageReader, poplib.POP3_SSL):
    pass


def read_multiline(file) -> bytes:
    """The body of a multi-line POP3 answer (RFC 1939 3) from `file`, up to its terminating '.'
    line: a line starting with '..' loses its first '.', as poplib does; every byte else is kept."""
    out = bytearray()
    readline = file.readline
    while True:
        line = readline()  # no length limit: a line of the message, which is held whole anyway
        if not line:
            raise EOFError("connection closed in the middle of a message")
        if line == b".\r\n" or line == b".\n":
            return bytes(out)
        out += line[1:] if line.startswith(b"..") else line


def _headers(body: bytes) -> bytes:
    """The header section of a message: up to its first empty line (all of it if it has none)."""
    if body.startswith((b"\r\n", b"\n")):
        return b""
    end = _HEADER_END.search(body)
    return body if end is None else body[: end.start()]


class Pop3Store:
    separator = None
    session_errors = 0  # no NO/BAD answers to count (base.Store.session_errors)
    prefix = ""
    # exact_sizes=False: LIST sizes are not the sizes of the bytes RETR serves (module doc);
    # sessions=1: many POP3 servers lock the maildrop.
    ADVERTISED = Capabilities(writable=False, keywords=False, exact_sizes=False, dated_listings=False, sessions=1,
                              live=False)

    def __init__(self, ep: Endpoint, creds: Credentials, opts: ConnectOptions | None = None):
        self.endpoint = ep
        self._opts = opts or ConnectOptions()
        self.capabilities = dataclasses.replace(self.ADVERTISED)
        self._conn = self._connect(creds)
        self._numbers: dict[int, int] = {}  # uid -> message number in this session
        self._sizes: dict[int, int] = {}

    # -- connection -------------------------------------------------------------------------

    def _connect(self, creds: Credentials) -> _MessageReader:
        ep, opts = self.endpoint, self._opts
        ctx = tls_context(ep, opts)
        try:
            conn: _MessageReader
            if ep.implicit_tls:
                conn = _Pop3Tls(ep.host, ep.port, timeout=opts.timeout, context=ctx)
            else:
                conn = _Pop3(ep.host, ep.port, timeout=opts.timeout)
        except (OSError, poplib.error_proto) as e:
            raise connect_failed(e, ep) from None
        try:
            if not ep.implicit_tls and not stay_plain(ep, opts, lambda: "STLS" in _capa(conn), "STLS"):
                _stls(conn, ep, ctx)
            conn.user(ep.user)
            conn.pass_(creds.secret())
        except ConnectionFailed:
            conn.close()
            raise
        except poplib.error_proto as e:
            conn.close()
            raise ConnectionFailed(f"login failed for {ep.user}@{ep.host}: {server_text(e)}") from None
        except OSError as e:
            conn.close()
            raise connect_failed(e, ep) from None
        return conn

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (OSError, EOFError) as e:
            raise connection_lost(self.endpoint.host, f"POP3 {what}", e) from None
        except poplib.error_proto as e:
            raise FolderError(f"POP3 {what} failed on {self.endpoint.host}: {server_text(e)}") from None

    # -- Store interface ----------------------------------------------------------------------

    def list_folders(self) -> list[FolderInfo]:
        return [FolderInfo(INBOX, "INBOX", frozenset(), None, True)]

    def _only_inbox(self, name: Folder) -> None:
        if name != INBOX:
            raise FolderError(f"POP3 has only INBOX, not '{display(name)}'")

    def status(self, name: Folder) -> FolderStatus:
        self._only_inbox(name)
        count, size = self._call("STAT", self._conn.stat)
        return FolderStatus(uidvalidity=UIDVALIDITY, uidnext=0, messages=count, size=size)

    def select(self, name: Folder, readonly: bool = True) -> FolderStatus:
        self._only_inbox(name)
        _resp, lines, _ = self._call("UIDL", self._conn.uidl)
        _resp, sizes, _ = self._call("LIST", self._conn.list)
        size_by_num = {int(n): int(s) for n, s in (line.split()[:2] for line in sizes)}
        self._numbers.clear()
        self._sizes.clear()
        for line in lines:
            num, uidl = line.split(None, 1)
            uid = uid_from_uidl(uidl.strip())
            self._numbers[uid] = int(num)
            self._sizes[uid] = size_by_num.get(int(num), 0)
        return FolderStatus(uidvalidity=UIDVALIDITY, messages=len(self._numbers), size=sum(self._sizes.values()))

    def list_messages(self, uids: Sequence[int] | None = None) -> list[MessageMeta]:
        """From the UIDL and LIST of select(): no date (fetch() gives it), LIST's size (not exact)."""
        wanted = uids if uids is not None else sorted(self._numbers, key=self._numbers.__getitem__)
        return [MessageMeta(uid, self._sizes[uid], (), "") for uid in wanted if uid in self._numbers]

    def fetch(self, uids: Sequence[int]) -> Iterator[Message]:
        """RETR; each Message's meta has the size of the bytes served and the date of their headers."""
        for uid in uids:
            num = self._numbers.get(uid)
            if num is None:
                continue
            body = self._call("RETR", self._conn.retr_bytes, num)
            yield Message(MessageMeta(uid, len(body), (), date_from_headers(_headers(body))), body)

    def create_folder(self, name: Folder, special_use: str | None = None) -> None:
        _read_only()

    def subscribe(self, name: Folder) -> None:
        _read_only()

    def append(self, name: Folder, items: Sequence[AppendItem]) -> list[int | None]:
        _read_only()

    def set_flags(self, uid: int, add: Iterable[str], remove: Iterable[str]) -> None:
        _read_only()

    def expunge_uids(self, uids: Sequence[int]) -> None:
        _read_only()

    def limits(self, folders: Sequence[Folder]) -> Limits:
        return Limits()  # it says nothing of limits (and takes any message it can store)

    def close(self) -> None:
        try:
            self._conn.quit()  # QUIT without DELE: nothing is removed from the server
        except Exception:
            try:
                self._conn.close()
            except Exception:
                pass


def _read_only() -> NoReturn:
    """What every call that writes raises (base.Store: FolderError from a read-only store)."""
    raise FolderError("POP3 is read-only: it can only be a source")


def _capa(conn: poplib.POP3) -> dict:
    """CAPA (RFC 2449); none if the server does not know it."""
    try:
        return conn.capa()
    except poplib.error_proto:
        return {}


def _stls(conn: poplib.POP3, ep: Endpoint, ctx) -> None:
    try:
        conn.stls(ctx)
    except (OSError, poplib.error_proto) as e:
        raise upgrade_failed(e, ep, "STLS") from None
