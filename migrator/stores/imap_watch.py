"""Watching an IMAP source for changes (follow mode): NOTIFY (RFC 5465) or IDLE (RFC 2177).

A watch owns its connection until closed: the connection sends nothing else, so every line the
server sends is an event (or the answer to the watch's own IDLE/DONE). The lines are read through
Wire.read_line (imap_wire: the only private imaplib access); this module only speaks the two
protocols and tells which folder a line is about.

- NOTIFY: `NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))`. Nothing is
  selected, so every message event comes as an untagged STATUS of its mailbox (RFC 5465 5.2),
  and a folder created, deleted or renamed as a LIST (5.4). A flag change comes as STATUS
  (HIGHESTMODSEQ) only once CONDSTORE is enabled (ENABLE CONDSTORE first, where offered): a
  source with NOTIFY but no CONDSTORE has its flags polled besides (engine/follow.py). Where IDLE is offered too the
  connection then idles as well: a server may keep events for a client that is running no command
  (Dovecot sends them either way).
- IDLE: one folder, EXAMINEd (read-only: watching never changes \\Recent or anything else);
  EXISTS, EXPUNGE, VANISHED and FETCH (a flag change) are its events. RFC 2177 asks a client to
  leave IDLE and enter it again at least every 29 minutes: done every IDLE_RENEW seconds.
"""

from __future__ import annotations

import imaplib
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imapclient import imap_utf7
from imapclient.response_parser import parse_response

from migrator.errors import FolderError
from migrator.naming import Folder, from_server
from migrator.stores.base import Changes
from migrator.stores.connection import connection_lost

if TYPE_CHECKING:
    from migrator.stores.imap import ImapStore

IDLE_RENEW = 25 * 60.0  # below the 29 minutes of RFC 2177 (and of servers' inactivity timers)
ANSWER_WAIT = 30.0  # seconds to wait for the answer to NOTIFY SET or DONE
NOTIFY_EVENTS = b"NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))"
_MESSAGE_EVENT = re.compile(rb"^\* (\d+ (EXISTS|EXPUNGE|FETCH|RECENT)|VANISHED)\b", re.IGNORECASE)
_LOST = (imaplib.IMAP4.abort, OSError, EOFError)


class ImapWatch:
    def __init__(self, store: ImapStore, names: Sequence[Folder] | None):
        self.store, self.wire = store, store.wire
        self._idle_tag: bytes | None = None
        self._idle_since = 0.0
        self._pending: set[Folder] = set()
        self._folder_list = False
        self._one: Folder | None = None
        can_idle = "IDLE" in store.raw_capabilities
        if names is None:
            self._guarded("NOTIFY", self._notify)
        else:
            if len(names) != 1 or not can_idle:
                raise ValueError("IDLE watches exactly one folder, on a server that offers IDLE")
            self._one = names[0]
            store.select(self._one, readonly=True)
        if can_idle:
            self._guarded("IDLE", self._idle)

    # -- the protocols -------------------------------------------------------------------------

    def _notify(self) -> None:
        caps = self.store.raw_capabilities
        if "CONDSTORE" in caps and "ENABLE" in caps:
            # A flag change in a mailbox not selected then comes as STATUS (HIGHESTMODSEQ n)
            # (RFC 7162 3.2; without it Dovecot sends nothing for it)
            self._until_tagged(self.wire.send_command(b"ENABLE CONDSTORE"))
        tag = self.wire.send_command(NOTIFY_EVENTS)
        typ, text = self._until_tagged(tag)
        if typ != b"OK":
            raise FolderError(f"NOTIFY refused by {self.store.endpoint.host}: {text}")

    def _idle(self) -> None:
        self._idle_tag = self.wire.send_command(b"IDLE")
        self._idle_since = time.monotonic()
        while True:
            line = self._line(ANSWER_WAIT)
            if line.startswith(b"+"):
                return
            if line.startswith(self._idle_tag + b" "):
                self._idle_tag = None
                raise FolderError(f"IDLE refused by {self.store.endpoint.host}: {line.decode(errors='replace')}")
            self._event(line)

    def _done(self) -> None:
        if self._idle_tag is not None:
            tag, self._idle_tag = self._idle_tag, None
            self.wire.send_line(b"DONE")
            self._until_tagged(tag)

    def _until_tagged(self, tag: bytes) -> tuple[bytes, str]:
        """Events read until the tagged answer; (OK/NO/BAD, its text)."""
        while True:
            line = self._line(ANSWER_WAIT)
            if line.startswith(tag + b" "):
                parts = line.split(b" ", 2)
                return parts[1].upper(), (parts[2].decode(errors="replace") if len(parts) > 2 else "")
            self._event(line)

    def _line(self, timeout: float) -> bytes:
        line = self.wire.read_line(timeout)
        if line is None:
            raise imaplib.IMAP4.abort(f"no answer in {timeout:.0f} s")
        return line

    def _guarded(self, what: str, fn) -> None:
        try:
            fn()
        except _LOST as e:
            raise connection_lost(self.store.endpoint.host, what, e) from None

    # -- events --------------------------------------------------------------------------------

    def _event(self, line: bytes) -> None:
        upper = line[:12].upper()
        if upper.startswith(b"* BYE"):
            raise imaplib.IMAP4.abort(line.decode(errors="replace"))
        if upper.startswith(b"* STATUS "):
            folder = self._status_folder(line[len(b"* STATUS "):])
            if folder is not None:
                self._pending.add(folder)
        elif upper.startswith(b"* LIST "):
            self._folder_list = True
        elif self._one is not None and _MESSAGE_EVENT.match(line):
            self._pending.add(self._one)

    def _status_folder(self, rest: bytes) -> Folder | None:
        try:
            raw = parse_response([rest])[0]
        except Exception:
            return None
        name = imap_utf7.decode(raw) if isinstance(raw, bytes) else str(raw)
        return from_server(name, self.store.separator, self.store.prefix)

    def changes(self, timeout: float) -> Changes:
        self._guarded("IDLE", lambda: self._read(timeout))
        out = Changes(frozenset(self._pending), self._folder_list)
        self._pending, self._folder_list = set(), False
        return out

    def _read(self, timeout: float) -> None:
        if self._idle_tag is not None and time.monotonic() - self._idle_since > IDLE_RENEW:
            self._done()
            self._idle()
        wait = timeout
        while (line := self.wire.read_line(wait)) is not None:
            wait = 0.0  # drain what came with it, then return
            if self._idle_tag is not None and line.startswith(self._idle_tag + b" "):
                self._idle()  # the server ended the IDLE itself: idle again
            else:
                self._event(line)

    def close(self) -> None:
        try:
            self._done()
        except Exception:
            pass  # the connection is closed after this anyway


def watch(store: ImapStore, names: Sequence[Folder] | None) -> ImapWatch:
    """ImapStore.watch (Watchable): a watch on this connection, which then does nothing else."""
    return ImapWatch(store, names)
