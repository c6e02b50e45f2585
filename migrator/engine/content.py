"""Which copies are read back from the destination, and how to say what a server changed.

A server may store other bytes than it was sent, and keep the size: Cyrus (munge8bit, its
default) replaces raw 8-bit octets in header fields with 'X'. The size check at a folder's end
cannot see that, so a copy whose bytes are *at risk* of a same-size change is read back and
compared by its fingerprint:

- any octet outside US-ASCII (8-bit header fields are what servers rewrite in place);
- NUL (an IMAP literal cannot carry it: a server may store or serve something else);
- a very large message (servers truncate, or rewrite MIME they cannot store as is).

The changes servers make to line ends (a bare CR or LF made CRLF, a CRLF added at the end) and
to lines over 998 octets (wrapped) change the size, which is checked for every copy. Plain ASCII
under the size limit is therefore not read back: a clean copy of ordinary mail costs one
isascii() scan (29 ms per 252 MB here). The first copy of each run is read back as well (a
sample: a server that rewrites everything is caught in the first folder).

Pure functions: no I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from migrator.digest import fingerprint

LARGE = 10 << 20  # from this size on a copy is read back (servers truncate or convert big messages)

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def at_risk(body: bytes, nul_free: bool = False) -> bool:
    """Whether a server is known to change these bytes at the same size, at least sometimes.
    nul_free: the body is known to hold no NUL (read from an IMAP literal): not scanned for it."""
    return len(body) >= LARGE or not body.isascii() or (not nul_free and b"\x00" in body)


_BOUNDARY = re.compile(rb'^content-type:[^\n]*(?:\n[ \t][^\n]*)*?boundary="?([^";\r\n]+)"?',
                       re.IGNORECASE | re.MULTILINE)
CUT_SHORT = ("the source served it cut short: it ends by opening a MIME part and never closes its "
             "multipart (Courier serves a message of more than 299 parts so)")
SERVED_CUT_SHORT = CUT_SHORT + "; copied as served"


# Courier's rfc2045 parser serves at most 300 parts (the preamble counts): 299 delimiters and the
# one opening part 300. Real mail also ends by opening a part (6 of the 1,202 corpus messages,
# malformed), but with a handful of parts: hundreds of them tell a server's cut from a sender's.
CUT_AFTER_PARTS = 299


def served_cut_short(body: bytes) -> bool:
    """A multipart message of hundreds of parts that ends with the delimiter opening one, its
    close delimiter nowhere: what a server that stops serving a message at a part serves
    (Courier). The listing's size agrees with the cut bytes: nothing else shows it."""
    last = body[-300:].rstrip(b"\r\n").rsplit(b"\n", 1)[-1].rstrip(b"\r")  # a delimiter is at most 72 octets
    if not last.startswith(b"--") or last.endswith(b"--") or body.count(last) < CUT_AFTER_PARTS:
        return False
    m = _BOUNDARY.search(_header(body))
    return m is not None and last == b"--" + m.group(1).strip() and last + b"--" not in body


def _header(body: bytes) -> bytes:
    m = _HEADER_END.search(body)
    return body[: m.start()] if m else body


@dataclass(frozen=True)
class Shape:
    """What a server is known to change in a message, counted: enough to say what changed without
    keeping the bytes that were sent."""

    size: int
    header_8bit: int
    body_8bit: int
    nul: int
    bare_lf: int
    bare_cr: int
    crlf_end: bool
    fields: frozenset[bytes]  # header field names, in lower case

    @classmethod
    def of(cls, body: bytes) -> Shape:
        header = _header(body)
        h8 = len(header) - len(header.decode("latin-1").encode("ascii", "ignore"))
        all8 = len(body) - len(body.decode("latin-1").encode("ascii", "ignore")) if not body.isascii() else 0
        crlf = body.count(b"\r\n")
        return cls(len(body), h8, all8 - h8, body.count(b"\x00"), body.count(b"\n") - crlf,
                   body.count(b"\r") - crlf, body.endswith(b"\r\n"), _field_names(header))


def _field_names(header: bytes) -> frozenset[bytes]:
    return frozenset(m.group(1).lower() for m in re.finditer(rb"(?m)^([!-9;-~]+)[ \t]*:", header))


CHANGED = "the destination server changed the message while storing it"


def same_size_change(size: int) -> str:
    """What can be said of a changed copy when only the SHA-256 of what was sent is known."""
    return f"{CHANGED}: other bytes than were sent, at the same size ({size})"


def describe_change(sent: Shape, stored: bytes) -> str:
    """One line saying how the stored copy differs from what was sent (whose Shape is `sent`)."""
    got = Shape.of(stored)
    what = []
    added = sorted(f.decode("ascii", "replace") for f in got.fields - sent.fields)
    if added:
        what.append("header field(s) added: " + ", ".join(added))
    if got.header_8bit < sent.header_8bit:
        what.append(f"{sent.header_8bit - got.header_8bit} 8-bit octet(s) in the header replaced")
    if got.body_8bit != sent.body_8bit:
        what.append(f"8-bit octets in the body changed ({sent.body_8bit} sent, {got.body_8bit} stored)")
    if got.nul != sent.nul:
        what.append(f"NUL octets changed ({sent.nul} sent, {got.nul} stored)")
    if got.bare_lf != sent.bare_lf or got.bare_cr != sent.bare_cr:
        what.append("line endings changed")
    if got.crlf_end and not sent.crlf_end:
        what.append("a line end added at the end")
    if got.size != sent.size:
        what.append(f"{sent.size} bytes sent, {got.size} stored")
    if not what:
        what.append(f"other bytes at the same size ({sent.size})")
    return f"{CHANGED}: " + "; ".join(what)


# Header fields mail stores add to what they serve (mbox servers: GNU imap4d, UW-IMAP): a copy that
# differs from what was sent only by them is the same message, altered.
ADDED_FIELDS = frozenset({b"status", b"x-status", b"x-uid", b"x-imapbase", b"x-imap", b"x-keywords",
                          b"content-length", b"lines"})


def loose_form(body: bytes) -> bytes:
    """The message as the rewrites servers are known to make leave it: NUL as 0x80 (as Dovecot
    serves it), line ends as CRLF and
    none at the very end; a leading mbox "From " line dropped; in the header, 8-bit octets as 'X'
    (Cyrus's munge8bit), field names in lower case with no space after the colon (imap4d re-spaces
    them), and the fields mbox servers add (ADDED_FIELDS) left out. Two messages with the same
    loose form are one message, one of them rewritten: used to recognise a copy a server altered,
    so that it is reported instead of copied again (and found when the server gives no UID)."""
    text = body.replace(b"\x00", b"\x80").replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n")
    if text.startswith(b"From "):
        text = text.partition(b"\n")[2]
    header, sep, rest = text.partition(b"\n\n")
    header = re.sub(rb"[\x80-\xff]", b"X", header)  # first: an 8-bit octet may stand in a field name
    lines, keep = [], True
    for line in header.split(b"\n"):
        if line[:1] in (b" ", b"\t"):  # a continuation: goes with its field
            if keep:
                lines.append(line)
            continue
        name, colon, value = line.partition(b":")
        keep = not (colon and name.strip().lower() in ADDED_FIELDS)
        if keep:
            lines.append(name.strip().lower() + b":" + value.lstrip() if colon else line)
    return (b"\n".join(lines) + sep + rest).replace(b"\n", b"\r\n")


def loose_digest(body: bytes) -> str:
    return fingerprint(loose_form(body))


def loose_window(size: int) -> tuple[int, int]:
    """The sizes a copy of a message of `size` bytes may have after the rewrites loose_form undoes:
    line ends doubled at most (a bare LF stored as CRLF), a few header fields added, a few bytes
    taken off (a line end at the end, re-spacing). Outside it, a message is not a candidate."""
    return max(0, size - 64), 2 * size + 256
