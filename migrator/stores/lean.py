"""A cheaper way for imaplib to read the untagged FETCH lines that make up bulk answers.

imaplib handles every response line the same way: it formats a repr() of the line
for its debug log, then tries three or four regular expressions on it. For a copy
that is two lines per message body and one per metadata line. `install()` puts a
reader on the connection that takes '* N FETCH ...' lines, and their literals, in
a few byte operations and stores them exactly as imaplib would
(untagged_responses['FETCH']); every other line goes to imaplib's own reader.
Not installed with --debug, which wants imaplib's trace of every line.
"""

from __future__ import annotations

import imaplib
import re

_FETCH = re.compile(rb"\* (\d+) FETCH (.*)", re.DOTALL)


def install(imap) -> None:
    cls = type(imap)
    plain_get_line = cls._get_line.__get__(imap)
    plain_get_response = cls._get_response.__get__(imap)

    def get_line() -> bytes:
        line = imap.file.readline(imaplib._MAXLINE + 1)
        if len(line) > imaplib._MAXLINE:
            raise imap.error("got more than %d bytes" % imaplib._MAXLINE)
        if not line:
            raise imap.abort("socket error: EOF")
        if not line.endswith(b"\r\n"):
            raise imap.abort("socket error: unterminated line: %r" % line)
        return line[:-2]

    def get_response():
        resp = get_line()
        m = _FETCH.match(resp)
        if m is None:
            return by_imaplib(resp)
        # Stored as imaplib stores it: "N (items...", each literal as (line so far, bytes),
        # then the rest of the answer. (select() replaces the dict: looked up each time.)
        fetched = imap.untagged_responses.setdefault("FETCH", [])
        dat = m.group(1) + b" " + m.group(2)
        while dat.endswith(b"}"):
            start = dat.rfind(b"{")
            size = dat[start + 1 : -1]
            if start < 0 or not size.isdigit():
                break
            fetched.append((dat, imap.read(int(size))))
            dat = get_line()
        fetched.append(dat)
        return resp

    def by_imaplib(first: bytes):
        """imaplib's own reader, handed the line already read."""
        pending = [first]

        def next_line() -> bytes:
            return pending.pop() if pending else plain_get_line()

        imap._get_line = next_line
        try:
            return plain_get_response()
        finally:
            del imap._get_line

    imap._get_response = get_response
