"""The three export formats, and what each one does to a message's bytes (nothing, except mbox).

- mbox (mboxrd): one file per folder. A message that does not end with a newline gets one.
  Its flags go in three header lines, always all three, before its first line (with that line's
  line ending): `Status: RO` (\\Seen) or `Status: O`, `X-Status: ` A (\\Answered) F (\\Flagged)
  T (\\Draft) D (\\Deleted), `X-Keywords: ` its keywords, as mutt, Dovecot and Python's mailbox
  read them. Fields of these three names the message carries in its header (from an mbox it
  came through) are dropped: mutt adds up the flags of every Status and X-Status it finds, so a
  stale `X-Status: D` would show a message the archive holds undeleted as deleted (mutt, too,
  drops a message's own when it writes an mbox). Then mboxrd quoting (a line `>*From ` gets one
  more `>`), a `From MAILER-DAEMON <INTERNALDATE in UTC, asctime>` line before it and an empty
  line after it. Taking the three lines off, then one `>` off each `>+From ` line, gives the
  bytes back, less the dropped fields (a final newline added, if it had none).
- Maildir: one maildir per folder; each message a file of exactly its bytes, in cur/, its
  system flags in the name's info (`:2,FRS`), its mtime the INTERNALDATE. Keywords are not kept:
  Maildir has no standard place for them.
- eml: one directory per folder, `UID.eml` of exactly the message's bytes, mtime the INTERNALDATE.
  Flags are not kept: a .eml file has no place for them.

Folder names become paths component by component (folder_path()): '%', '/', '.' and NUL are
percent-escaped, as is the first letter of a component named cur, new or tmp, so that no folder
name can climb out of OUT, hide as a dot file or collide with a maildir's own directories.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import BinaryIO, Protocol

from migrator.fsutil import ensure_private_dir
from migrator.imapdate import date_instant
from migrator.naming import Folder
from migrator.stores.base import MessageMeta

FORMATS = ("mbox", "maildir", "eml")
_QUOTE = re.compile(rb"^(>*From )", re.MULTILINE)
# A message's header: field lines (name, colon), their continuation lines, and the mbox From_
# line a message kept from an mbox may start with; it ends at the first other line (the empty one).
_HEADER = re.compile(rb"(?:(?:[!-9;-~]+[ \t]*:|From )[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*)*")
_FLAG_FIELD = re.compile(rb"^(?:status|x-status|x-keywords)[ \t]*:[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*",
                         re.MULTILINE | re.IGNORECASE)
_MAILDIR_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R", "\\Seen": "S",
                    "\\Deleted": "T"}
_X_STATUS = {"\\Answered": "A", "\\Flagged": "F", "\\Draft": "T", "\\Deleted": "D"}


class FolderWriter(Protocol):
    def write(self, meta: MessageMeta, body: bytes) -> None: ...

    def close(self) -> None: ...


def folder_path(folder: Folder) -> str:
    """A folder as a relative path, one directory level per component (see the module's docstring)."""
    parts = []
    for comp in folder:
        safe = "".join(f"%{ord(c):02X}" if c in "%/.\0" else c for c in comp)
        if safe in ("cur", "new", "tmp"):
            safe = f"%{ord(safe[0]):02X}{safe[1:]}"
        parts.append(safe or "%")  # an empty component still needs a name
    return os.path.join(*parts)


def instant(meta: MessageMeta) -> float:
    """The INTERNALDATE in seconds since the epoch (0 when the archive holds none)."""
    return date_instant(meta.internaldate) or 0.0


def mboxrd_quote(body: bytes) -> bytes:
    return _QUOTE.sub(rb">\1", body)


def without_flag_fields(body: bytes) -> bytes:
    """The message less the Status, X-Status and X-Keywords fields of its header (why: the module's
    docstring)."""
    header = _HEADER.match(body)  # always matches (at least b"")
    end = header.end() if header else 0
    return _FLAG_FIELD.sub(b"", body[:end]) + body[end:]


def mbox_entry(meta: MessageMeta, body: bytes) -> bytes:
    """One message as mboxrd holds it (what this adds, drops and why: the module's docstring)."""
    flags = set(meta.flags)
    body = without_flag_fields(body)
    if not body.endswith(b"\n"):
        body += b"\n"
    eol = b"\r\n" if body.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    # All three always, first, so that readers that take a header's first occurrence read these
    # (a message may carry its own, from an mbox it came through), and an unquoting reader knows
    # exactly what to take off.
    status = [b"Status: RO" if "\\Seen" in flags else b"Status: O",
              b"X-Status: " + "".join(letter for flag, letter in _X_STATUS.items() if flag in flags).encode(),
              b"X-Keywords: " + " ".join(f for f in meta.flags if not f.startswith("\\")).encode("utf-8", "replace")]
    from_line = b"From MAILER-DAEMON " + time.asctime(time.gmtime(instant(meta))).encode() + b"\n"
    return from_line + mboxrd_quote(eol.join(status) + eol + body) + b"\n"


def maildir_name(meta: MessageMeta) -> str:
    letters = "".join(sorted(letter for flag, letter in _MAILDIR_LETTERS.items() if flag in meta.flags))
    return f"{int(instant(meta))}.M{meta.uid}.migrator-export:2,{letters}"


def _create(path: str) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb")


class MboxWriter:
    def __init__(self, out: str, folder: Folder):
        path = os.path.join(out, folder_path(folder) + ".mbox")
        ensure_private_dir(os.path.dirname(path))
        self._fh = _create(path)

    def write(self, meta: MessageMeta, body: bytes) -> None:
        self._fh.write(mbox_entry(meta, body))

    def close(self) -> None:
        self._fh.close()


class MaildirWriter:
    """Each message written in tmp/, then renamed into cur/ (the Maildir protocol)."""

    def __init__(self, out: str, folder: Folder):
        self._dir = os.path.join(out, folder_path(folder))
        for sub in ("cur", "new", "tmp"):
            ensure_private_dir(os.path.join(self._dir, sub))

    def write(self, meta: MessageMeta, body: bytes) -> None:
        name = maildir_name(meta)
        tmp = os.path.join(self._dir, "tmp", name)
        with _create(tmp) as fh:
            fh.write(body)
        when = instant(meta)
        os.utime(tmp, (when, when))
        os.rename(tmp, os.path.join(self._dir, "cur", name))

    def close(self) -> None:
        pass


class EmlWriter:
    def __init__(self, out: str, folder: Folder):
        self._dir = os.path.join(out, folder_path(folder))
        ensure_private_dir(self._dir)

    def write(self, meta: MessageMeta, body: bytes) -> None:
        path = os.path.join(self._dir, f"{meta.uid}.eml")
        with _create(path) as fh:
            fh.write(body)
        when = instant(meta)
        os.utime(path, (when, when))

    def close(self) -> None:
        pass


WRITERS: dict[str, Callable[[str, Folder], FolderWriter]] = {
    "mbox": MboxWriter, "maildir": MaildirWriter, "eml": EmlWriter}
