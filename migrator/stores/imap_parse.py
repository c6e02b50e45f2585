"""Reading IMAP answers, without I/O: what a NO means (classify), what CAPABILITY means for the
Store contract, LIST, listings, message heads, STATUS, APPENDUID and uid-sets. The usual forms
are read by one regular expression per line; anything else by imapclient's general parser
(public API), which is too slow to use for every line of a big folder."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from datetime import datetime

from imapclient import imap_utf7
from imapclient.response_parser import parse_fetch_response, parse_response

from migrator.imapdate import format_date
from migrator.naming import Folder, from_server
from migrator.stores.base import Capabilities, FolderInfo, FolderStatus, MessageMeta, normalize_flags
from migrator.throttle import is_throttle

SPECIAL_USE_ATTRS = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important")
# Response codes (RFC 5530) that mean "try again later" rather than "this message is bad":
# the folder is marched again after a reconnect and a backoff (engine/scheduler.py, Scheduler.retry).
TRANSIENT_CODES = ("UNAVAILABLE", "THROTTLED", "LIMIT", "INUSE", "SERVERBUG", "EXPUNGEISSUED")
TRANSIENT, FOLDER, MESSAGE = "transient", "folder", "message"

# The metadata every listing asks for. _META_IN_ORDER below expects its answer in this order.
META_ITEMS = "(UID RFC822.SIZE FLAGS INTERNALDATE)"
# What fetch() asks: the bytes with the rest of their metadata, in the same answer.
MESSAGE_ITEMS = "(UID FLAGS INTERNALDATE BODY.PEEK[])"
BINARY_ITEMS = "(UID BINARY.PEEK[])"

# What a FETCH of MESSAGE_ITEMS gives: uid -> (its metadata, its bytes); the size is theirs.
Fetched = dict[int, tuple[MessageMeta, bytes]]


def classify(text: str) -> str:
    """What a NO/BAD answer means for the run: TRANSIENT (retry), FOLDER (give the folder up) or
    MESSAGE (this one message is refused for good: [OVERQUOTA], [PARSE], [TOOBIG], too big...;
    recorded as failed, retried only with --retry-failed)."""
    upper = text.upper()
    if is_throttle(text):
        return TRANSIENT
    if "[LIMIT]" in upper and "SIZE" in upper:
        # A per-message size limit (Dovecot: "[LIMIT] Mail size is larger than the maximum
        # size allowed"): retrying cannot help, unlike a rate or connection limit.
        return MESSAGE
    if any(f"[{code}" in upper for code in TRANSIENT_CODES):
        return TRANSIENT
    if "[TRYCREATE]" in upper or "MAILBOX DOESN'T EXIST" in upper or "[NONEXISTENT]" in upper:
        return FOLDER
    return MESSAGE


def dec(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def text(data) -> str:
    """The text of a tagged answer's data, for messages."""
    return " ".join(dec(d) for d in data if d is not None) if data else ""


def capabilities_of(caps: set[str]) -> Capabilities:
    """What a server's CAPABILITY list (upper case) means for the Store contract."""
    out = Capabilities(
        writable=True,
        multiappend="MULTIAPPEND" in caps,
        uidplus="UIDPLUS" in caps,
        condstore="CONDSTORE" in caps,
        special_use="SPECIAL-USE" in caps,
        late_commits=True,
        pipelined=True,
        watch="notify" if "NOTIFY" in caps else "idle" if "IDLE" in caps else None,
        extra=caps,
    )
    for c in caps:
        if c.startswith("APPENDLIMIT="):
            out.max_append_size = int(c.split("=", 1)[1] or 0) or None
    return out


def folder_infos(listed: list[tuple], subscribed: set, separator: str | None, prefix: str) -> list[FolderInfo]:
    """LIST's [(attributes, separator, name)] (imapclient's form) -> the folders, INBOX first;
    subscribed: the names LSUB gave."""
    out: dict[Folder, FolderInfo] = {}
    for raw_attrs, _sep, raw_name in listed:
        attrs = frozenset(dec(a) for a in raw_attrs)
        special = next((a for a in SPECIAL_USE_ATTRS if a.lower() in {x.lower() for x in attrs}), None)
        name = dec(raw_name)
        comps = from_server(name, separator, prefix)
        out[comps] = FolderInfo(comps, name, attrs, special, name in subscribed)
    return sorted(out.values(), key=lambda f: (f.name != ("INBOX",), f.name))


# -- listings ------------------------------------------------------------------------------------

# One metadata FETCH answer: '* 12 FETCH (UID 34 RFC822.SIZE 2345 FLAGS (\\Seen $X) INTERNALDATE "..."'
# with the items in any order (lookaheads), and no literal.
_META_LINE = re.compile(
    rb"^\d+ \((?=.*?\bUID (?P<uid>\d+))(?=.*?\bRFC822\.SIZE (?P<size>\d+))"
    rb"(?=.*?\bFLAGS \((?P<flags>[^)]*)\))(?=.*?\bINTERNALDATE \"(?P<date>[^\"]*)\")"
)
# The same answer with the items in the order asked (what servers send): one pass over the line
# instead of four, for the 10,000 lines a 5,000-message folder costs (its listing, its size check).
_META_IN_ORDER = re.compile(
    rb"\d+ \(UID (?P<uid>\d+) RFC822\.SIZE (?P<size>\d+) FLAGS \((?P<flags>[^)]*)\) "
    rb"INTERNALDATE \"(?P<date>[^\"]*)\"\)\Z"
)


@functools.lru_cache(maxsize=1024)  # a mailbox has few distinct flag sets
def _flags(raw: bytes) -> tuple[str, ...]:
    return normalize_flags(f.decode("utf-8", "replace") for f in raw.split())


def _date(raw: bytes) -> str:
    date = raw.decode("ascii")
    return "0" + date[1:] if date.startswith(" ") else date  # " 4-Mar-2019": imapclient's "04-Mar-2019"


def parse_meta(data: list, uids: Sequence[int] | None) -> list[MessageMeta] | None:
    """imaplib's data of a META_ITEMS FETCH -> the listing: of every message (uids None: 1:*, in UID
    order) or of the given UIDs that are still there. None if an answer is not in the plain one-line
    form (the caller then uses imapclient's parser)."""
    found: dict[int, MessageMeta] = {}
    for line in data:
        if line is None:
            continue  # no FETCH answer at all (every UID expunged)
        if not isinstance(line, bytes):
            return None  # a literal somewhere: not the simple form
        m = _META_IN_ORDER.match(line) or _META_LINE.search(line)
        if m is None:
            if b"RFC822.SIZE" in line:
                return None
            continue  # an unsolicited FETCH (e.g. FLAGS changed by another session)
        uid, size, flags, date = m.group("uid", "size", "flags", "date")
        found[int(uid)] = with_labels(MessageMeta(int(uid), int(size), _flags(flags), _date(date)), line)
    if uids is None:
        return [found[u] for u in sorted(found)]
    wanted = set(uids)
    if not wanted.issuperset(found):
        return None
    return [found[u] for u in uids if u in found]


def metas_from_any_fetch(data: list, uids: Sequence[int]) -> list[MessageMeta]:
    """The listing of the given UIDs from a META_ITEMS answer in any form, by imapclient's parser."""
    parsed = parse_fetch_response(data, False, True)
    return [meta_of(uid, parsed[uid]) for uid in uids if b"RFC822.SIZE" in parsed.get(uid, {})]


def meta_of(uid: int, d: dict) -> MessageMeta:
    """A MessageMeta from imapclient's parse of one FETCH answer (with normalise_times off)."""
    meta = MessageMeta(uid=uid, size=int(d[b"RFC822.SIZE"]), flags=normalize_flags(dec(f) for f in d[b"FLAGS"]),
                       internaldate=_format_date(d[b"INTERNALDATE"]))
    if b"X-GM-MSGID" not in d:
        return meta
    labels = tuple((imap_utf7.decode(lab if isinstance(lab, bytes) else str(lab).encode()),)
                   for lab in d.get(b"X-GM-LABELS") or ())
    return dataclasses.replace(meta, identity=str(d[b"X-GM-MSGID"]), also_in=labels)


# Gmail's items (X-GM-EXT-1) in a metadata answer. The labels are kept as one-component names in
# MessageMeta.also_in until the Gmail store (stores/gmail.py) maps them to its folders.
_GM_MSGID = re.compile(rb"\bX-GM-MSGID (\d+)")
_GM_LABELS = re.compile(rb"\bX-GM-LABELS \(((?:[^()\"]|\"(?:[^\"\\]|\\.)*\")*)\)")
_GM_LABEL = re.compile(rb'"((?:[^"\\]|\\.)*)"|([^\s"]+)')


def with_labels(meta: MessageMeta, line: bytes) -> MessageMeta:
    """meta with Gmail's X-GM-MSGID and X-GM-LABELS of its one-line answer, if it has them."""
    msgid = _GM_MSGID.search(line) if b"X-GM-MSGID" in line else None
    if msgid is None:
        return meta
    found = _GM_LABELS.search(line)
    labels = [q.replace(b'\\"', b'"').replace(b"\\\\", b"\\") if q else a
              for q, a in _GM_LABEL.findall(found.group(1) if found else b"")]
    return dataclasses.replace(meta, identity=msgid.group(1).decode(),
                               also_in=tuple((imap_utf7.decode(x),) for x in labels))


def _format_date(value) -> str:
    if isinstance(value, datetime):
        return format_date(value)
    return dec(value)


# -- messages ------------------------------------------------------------------------------------

# The head of one MESSAGE_ITEMS answer, up to its literal: '12 (UID 34 FLAGS (\\Seen) INTERNALDATE
# "..." BODY[] {5678}' as Dovecot, Courier and GNU imap4d send it; Cyrus puts FLAGS first, and
# with CONDSTORE on a MODSEQ may come along: the items in any order (lookaheads) for those.
_MESSAGE_IN_ORDER = re.compile(
    rb"\d+ \(UID (?P<uid>\d+) FLAGS \((?P<flags>[^)]*)\) INTERNALDATE \"(?P<date>[^\"]*)\" BODY\[\] ~?\{\d+\}\Z"
)
_MESSAGE_HEAD = re.compile(
    rb"\d+ \((?=.*?\bUID (?P<uid>\d+))(?=.*?\bFLAGS \((?P<flags>[^)]*)\))"
    rb"(?=.*?\bINTERNALDATE \"(?P<date>[^\"]*)\").* BODY\[\] ~?\{\d+\}\Z"
)
_BINARY_HEAD = re.compile(rb"\(UID (?P<uid>\d+) BINARY\[\] ~?\{\d+\}$")
# 0x80 after an ASCII octet (or first): never in UTF-8 text; what Dovecot serves for a stored NUL.
_LONE_0X80 = re.compile(rb"(?:\A|[\x00-\x7f])\x80")


def messages_from_fetch(data: list) -> Fetched | None:
    """imaplib's data of a MESSAGE_ITEMS FETCH -> {uid: (meta, body)}, when every answer has the
    usual form (the items, then the literal last); None when one does not."""
    out: Fetched = {}
    for item in data:
        if isinstance(item, tuple):
            m = _MESSAGE_IN_ORDER.match(item[0]) or _MESSAGE_HEAD.match(item[0])
            if m is None:  # e.g. UID after the literal, or more literals
                return None
            body, uid = item[1], int(m.group("uid"))
            out[uid] = (MessageMeta(uid, len(body), _flags(m.group("flags")), _date(m.group("date"))), body)
        elif isinstance(item, bytes) and b"BODY[" in item:  # BODY[] NIL: no literal
            return None
        # else: b")" closing a literal, None, or an unsolicited FETCH (flags changed elsewhere)
    return out


def messages_from_any_fetch(data: list) -> Fetched:
    """The same, for any form RFC 3501 allows, by imapclient's general parser."""
    out: Fetched = {}
    for uid, d in parse_fetch_response(data, False, True).items():
        if b"BODY[]" in d:
            body = d[b"BODY[]"] or b""
            date = _format_date(d[b"INTERNALDATE"]) if b"INTERNALDATE" in d else ""
            flags = normalize_flags(dec(f) for f in d.get(b"FLAGS", ()))
            out[uid] = (MessageMeta(uid, len(body), flags, date), body)
    return out


def binaries_from_fetch(data: list) -> dict[int, bytes]:
    """imaplib's data of a BINARY_ITEMS FETCH -> {uid: bytes} (the usual form only)."""
    out = {}
    for item in data:
        if isinstance(item, tuple):
            m = _BINARY_HEAD.search(item[0])
            if m is not None:
                out[int(m.group("uid"))] = item[1]
    return out


def nul_suspects(bodies: dict[int, bytes]) -> list[int]:
    """The UIDs whose BODY[] may hold a NUL served as 0x80: a 0x80 octet after an ASCII one (or
    first), which UTF-8 text never has. 25 ms per 252 MB of the benchmark's corpus (memchr
    first; the pattern only where it finds one)."""
    return [uid for uid, body in bodies.items() if b"\x80" in body and _LONE_0X80.search(body)]


def restore_nul(bodies: dict[int, bytes], binary: dict[int, bytes]) -> tuple[set[int], dict[int, str]]:
    """Put back the NUL octets a server replaced in BODY[]. An IMAP literal cannot carry NUL
    (RFC 3501 CHAR8), so Dovecot serves a stored NUL as 0x80, at the same size: without this the
    copy would differ from the stored message with nothing to show for it.

    binary: the BINARY[] (RFC 3516) bytes of the suspects, which may carry NUL in a literal8. If
    the two differ only where BINARY[] has NUL and BODY[] 0x80, the BINARY[] bytes replace the
    body in `bodies` (the same size). If BINARY[] holds NUL but differs otherwise (it also decodes
    base64 and quoted-printable parts), the message is copied as served, with a note. Returns the
    UIDs whose body now holds NUL, and the notes."""
    restored, notes = set(), {}
    for uid, raw in binary.items():
        if uid not in bodies or b"\x00" not in raw:
            continue
        if len(raw) == len(bodies[uid]) and raw.replace(b"\x00", b"\x80") == bodies[uid]:
            bodies[uid] = raw
            restored.add(uid)
        else:
            notes[uid] = ("the source server may serve NUL octets of this message as 0x80, and its BINARY[] "
                          "form decodes other parts: copied as served")
    return restored, notes


def checked_fetches(fetched: list, uids: Sequence[int],
                    read_back: Sequence[int]) -> tuple[list[MessageMeta], dict[int, bytes]]:
    """A folder's check (a META_ITEMS FETCH of `uids`, a MESSAGE_ITEMS one of `read_back`, either
    may be absent): (the listing of uids, {uid: body} of read_back). The FETCHes' untagged answers
    may come in either's share (a server answers pipelined commands as it likes): `fetched` is
    them taken together, told apart here by form (a body comes as a literal)."""
    bodies: dict[int, bytes] = {}
    if read_back:
        got = messages_from_fetch([x for x in fetched if isinstance(x, tuple)])
        if got is None:
            got = messages_from_any_fetch([x for x in fetched if not (isinstance(x, bytes) and b"RFC822.SIZE" in x)])
        bodies = {uid: body for uid, (_meta, body) in got.items()}
    if not uids:
        return [], bodies
    lines = [x for x in fetched if isinstance(x, bytes)]
    metas = parse_meta(lines or [None], list(uids))
    if metas is None:  # not the plain form: imapclient's parser (the folder may no longer be the selected one)
        metas = metas_from_any_fetch(lines, uids)
    return metas, bodies


# -- STATUS --------------------------------------------------------------------------------------

def mailbox_key(server_name: str) -> str:
    return "INBOX" if server_name.upper() == "INBOX" else server_name  # INBOX is case-insensitive


def status_of(by_name: dict[str, FolderStatus], server_name: str, alone: bool = False) -> FolderStatus | None:
    """The STATUS answer for one asked name: the same name; else the one name equal but for case
    (a case-insensitive server answers with its own spelling of a name typed in a plan); else,
    when only one folder was asked (alone), its only answer."""
    key = mailbox_key(server_name)
    if key in by_name:
        return by_name[key]
    folded = [st for name, st in by_name.items() if name.casefold() == key.casefold()]
    if len(folded) == 1:
        return folded[0]
    return next(iter(by_name.values())) if alone and len(by_name) == 1 else None


def statuses_by_name(untagged: list) -> dict[str, FolderStatus]:
    """Untagged STATUS answers -> {mailbox name as the server spells it (decoded): FolderStatus}.
    imaplib stores a name sent as a literal as (text before it, name), then the rest of the line."""
    out: dict[str, FolderStatus] = {}
    i = 0
    while i < len(untagged):
        item = untagged[i]
        if isinstance(item, tuple) and i + 1 < len(untagged):
            raw_name, rest, i = item[1], untagged[i + 1], i + 2
        elif isinstance(item, bytes):
            parsed = parse_response([item])
            raw_name, rest, i = (parsed[0] if parsed else None), item, i + 1
        else:
            i += 1
            continue
        st = parse_status([rest])
        if st is None or raw_name is None:
            continue
        name = imap_utf7.decode(raw_name) if isinstance(raw_name, bytes) else str(raw_name)
        out[mailbox_key(name)] = st
    return out


def parse_status(untagged: list) -> FolderStatus | None:
    """One untagged STATUS answer ('"name" (MESSAGES 3 UIDNEXT 4 ...)') -> FolderStatus.

    The last line holds the items even when the name came as a literal (imaplib then
    stores (line, name) first and the rest of the line after it)."""
    line = untagged[-1] if untagged else None
    if not isinstance(line, bytes):
        return None
    parsed = parse_response([line])
    flat = parsed[-1] if parsed and isinstance(parsed[-1], tuple) else ()
    items = dict(zip(flat[::2], flat[1::2], strict=False))  # name value pairs; an odd one out is dropped
    if b"UIDVALIDITY" not in items:
        return None
    return FolderStatus(
        uidvalidity=int(items[b"UIDVALIDITY"]),
        uidnext=int(items.get(b"UIDNEXT", 0)),
        messages=int(items.get(b"MESSAGES", 0)),
        size=int(items[b"SIZE"]) if b"SIZE" in items else None,
        highestmodseq=int(items[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in items else None,
    )


def selected_status(info: dict) -> FolderStatus:
    """imapclient's parse of a SELECT answer -> FolderStatus (messages: EXISTS)."""
    return FolderStatus(
        uidvalidity=int(info.get(b"UIDVALIDITY", 0)),
        uidnext=int(info.get(b"UIDNEXT", 0)),
        messages=int(info.get(b"EXISTS", 0)),
        highestmodseq=int(info[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in info else None,
    )


# -- APPENDUID and uid-sets -------------------------------------------------------------------------

_APPENDUID = re.compile(r"\[APPENDUID (\d+) ([\d:,]+)\]", re.I)


def parse_appenduid(text: str) -> list[int]:
    """'[APPENDUID 38505 3955:3957]' -> [3955, 3956, 3957] (RFC 4315 uid-set, in order)."""
    m = _APPENDUID.search(text or "")
    if not m:
        return []
    out: list[int] = []
    for part in m.group(2).split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            step = 1 if b >= a else -1
            out.extend(range(a, b + step, step))
        else:
            out.append(int(part))
    return out


def uid_set(uids: Sequence[int]) -> str:
    """[1,2,3,7,9,10] -> '1:3,7,9:10' (short command lines for big folders)."""
    ranges: list[list[int]] = []  # [first, last]
    for u in sorted(uids):
        if ranges and u == ranges[-1][1] + 1:
            ranges[-1][1] = u
        else:
            ranges.append([u, u])
    return ",".join(f"{first}:{last}" if last != first else str(first) for first, last in ranges)
