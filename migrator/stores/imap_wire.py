# long: every private imaplib/imapclient use stays in this one file, so a library upgrade is checked in one place
"""The IMAP wire layer: every use of imaplib's and imapclient's private parts, in one place.

imapclient parses answers and imaplib reads and writes the socket. migrator needs what neither
offers: commands pipelined (many sent before the first answer is read), raw APPEND literals
(imaplib rewrites line ends), bulk FETCH answers read cheaply, COMPRESS, SASL-IR, and no
CAPABILITY round trip after the greeting. Those reach into the libraries' private parts; this
module is the only one that does (rule: no private imaplib or imapclient access outside
imap_wire), and each such use says why in a comment. The methods replaced on the live imaplib
object are all here too:
- _get_response: the lean FETCH reader (install_lean_reader), when not tracing; and wrapped by
  count_refusals, which counts the session's tagged NO/BAD answers (Wire.refusals);
- send and file: COMPRESS=DEFLATE streams (Wire.compress; the streams are in deflate.py);
- send, for one batch: the writes of pipelined commands gathered into one (Wire._sent_together);
- read: big literals read into one buffer (Wire.read_literals_in_place).
Errors are raised as the libraries raise them (imaplib.IMAP4.abort, OSError...); imap.py maps
them onto migrator's errors.
"""

from __future__ import annotations

import base64
import functools
import imaplib
import re
import select
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imapclient
from imapclient import imap4, tls

from migrator.naming import Folder
from migrator.stores import deflate
from migrator.stores.base import AppendItem
from migrator.stores.imap_parse import Fetched, dec

imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))  # RFC 4978; imaplib refuses commands it does not list

SEND_COALESCE = 1 << 20  # APPEND: bodies below this are gathered into one write
LITERAL_INPLACE = 1 << 20  # FETCH: literals from this size on are read into one buffer
PIPELINE_WINDOW = 50  # commands sent before reading their answers (CREATE, SUBSCRIBE, STATUS)

_LITERAL_END = re.compile(rb"\{(\d+)\+?\}\r\n$")  # a line ending in a literal's announcement

# One pipelined command's answer: (OK/NO/BAD, tagged data, that command's untagged data).
Answer = tuple[str, list, list]


class _GreetingCapabilities:
    """imaplib sends CAPABILITY right after the greeting, even when the greeting carried the
    list ([CAPABILITY ...], RFC 3501 7.1; Dovecot, Cyrus and Gmail send it): a round trip per
    connection for nothing. The greeting's list is taken instead, once: after STARTTLS imaplib
    asks again and the server is asked (capabilities seen before TLS are not trusted after it)."""

    # Overrides imaplib's private _get_capabilities: the only hook between greeting and CAPABILITY.
    def _get_capabilities(self):
        if not getattr(self, "_greeting_capabilities_used", False):
            self._greeting_capabilities_used = True
            greeted = self.untagged_responses.pop("CAPABILITY", None)
            if greeted and greeted[-1]:
                self.capabilities = tuple(str(greeted[-1], self._encoding).upper().split())
                return
        super()._get_capabilities()


class _Plain(_GreetingCapabilities, imap4.IMAP4WithTimeout):
    pass


class _TLS(_GreetingCapabilities, tls.IMAP4_TLS):
    pass


class _Client(imapclient.IMAPClient):
    """imapclient's client on the imaplib classes above (the same arguments as its own)."""

    # Overrides imapclient's private _create_IMAP4: the only way to give it other imaplib classes.
    def _create_IMAP4(self):
        connect_timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _TLS(self.host, self.port, self.ssl_context, connect_timeout)
        return _Plain(self.host, self.port, connect_timeout)


@dataclass
class Opening:
    """What Wire.open_folder read: the answers to the commands before the SELECT, the SELECT's
    completion and parsed answer (info: None if it failed), whether it said READ-ONLY, and the
    untagged FETCH data of the FETCHes after it (None unless every one answered OK)."""

    before: list[Answer]
    typ: str
    data: list
    info: dict | None
    read_only: bool
    fetched: list | None


class ReadAhead:
    """Messages read in the round trip that opened their folder, handed to the fetch() after it.

    ImapStore.select_and_list(bodies=True) is told that every message listed will be fetched
    next: it asks their bytes (imap_parse.MESSAGE_ITEMS, what fetch() asks) with the SELECT and
    the listing, and keeps them here (keep). The rule: the next fetch() in that folder takes them
    if they hold every UID it asks for, with no round trip; else it asks the server. Either way
    they are dropped then (take), and also by any folder opening and by close() (drop): they are
    never served twice, for another folder, or after their folder was selected again."""

    def __init__(self) -> None:
        self._folder: Folder | None = None
        self._messages: Fetched = {}

    def keep(self, folder: Folder, messages: Fetched) -> None:
        self._folder, self._messages = folder, messages

    def take(self, folder: Folder | None, uids: Sequence[int]) -> Fetched | None:
        kept, held_for = self._messages, self._folder
        self.drop()
        if kept and held_for == folder and kept.keys() >= set(uids):
            return kept
        return None

    def drop(self) -> None:
        self._folder, self._messages = None, {}


class Refused(Exception):
    """The server refused an APPEND before its literal was sent (no LITERAL+)."""


class Wire:
    """One imapclient connection and the imaplib connection under it, driven below the public API."""

    def __init__(self, client: imapclient.IMAPClient):
        self.client = client
        self._imap = client._imap  # imapclient's imaplib connection: what this layer drives
        self.refusals = 0  # tagged NO/BAD answers since trace() (count_refusals)

    @classmethod
    def open(cls, host: str, port: int, implicit_tls: bool, ctx, timeout: float) -> Wire:
        """Connect (TLS from the first byte with implicit_tls) and read the greeting."""
        client = _Client(host, port=port, ssl=implicit_tls, ssl_context=ctx, timeout=timeout)
        client.normalise_times = False  # keep INTERNALDATE's timezone
        # No Nagle: a small write (a pipelined command, the CRLF ending an APPEND after a big body)
        # would otherwise wait for the ACK of the previous one, a round trip on a WAN.
        try:
            client._imap.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # imapclient hides the socket
        except (OSError, AttributeError):
            pass
        return cls(client)

    # -- logging in ---------------------------------------------------------------------------------

    def login_capabilities(self) -> frozenset[str]:
        """The capabilities to log in with, without a round trip: the greeting's, or after STARTTLS
        the ones imaplib asked again over TLS. (imapclient's has_capability() asks the server again at
        every call after STARTTLS: three CAPABILITY round trips before AUTHENTICATE.)"""
        return frozenset(str(c).upper() for c in self._imap.capabilities)

    def tls_version(self) -> str:
        return str(self._imap.sock.version())  # the socket imaplib wrapped at STARTTLS

    def authenticate_plain(self, raw: str, initial_response: bool) -> tuple[str, list]:
        """AUTHENTICATE PLAIN with `raw` (authzid NUL authcid NUL secret): on the command line with
        SASL-IR (RFC 4959), one round trip instead of two; else after imaplib's empty challenge."""
        if initial_response:
            token = base64.b64encode(raw.encode()).decode("ascii")
            typ, data = self._imap._simple_command("AUTHENTICATE", "PLAIN", token)  # imaplib has no SASL-IR
        else:
            typ, data = self._imap.authenticate("PLAIN", lambda _challenge: raw)
        if typ == "OK":
            self._imap.state = "AUTH"  # _simple_command does not move imaplib's state as authenticate() does
        return typ, data

    def compress(self) -> tuple[str, list]:
        """COMPRESS DEFLATE (RFC 4978); on OK both directions are deflate streams from here on.
        A BAD is returned as ("BAD", data): the caller carries on uncompressed."""
        try:
            typ, data = self._imap._simple_command("COMPRESS", "DEFLATE")  # imaplib has no COMPRESS
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as e:
            return "BAD", [str(e).encode()]
        if typ == "OK":
            # imaplib reads through its `file` and writes through its `send`: replaced on the instance.
            self._imap.send, self._imap.file = deflate.streams(self._imap.sock)
        return typ, data

    def trace(self, on: bool) -> None:
        """imapclient sets imaplib's debug level to 5, at which imaplib formats the repr() of every
        response (each message body, twice) before handing it to the logger: a third of the CPU
        of a copy and ~4x a big message in memory. Level 4 (--debug) logs lines only. Without a
        trace the lean FETCH reader reads bulk answers."""
        self._imap.debug = 4 if on else 0  # imapclient exposes no setting for imaplib's level
        if not on:
            install_lean_reader(self._imap)
        self._count_refusals()

    def _count_refusals(self) -> None:
        """Count the session's tagged NO/BAD answers, whichever command got them (pipelined ones
        too): a server may close a session after N of them (Microsoft 365: 10). Every answer line
        goes through imaplib's _get_response, the lean reader's or its own: wrapped here."""
        imap, wire = self._imap, self
        read = imap._get_response  # imaplib's reader (or the lean one on the instance)
        tagpre = imap.tagpre  # imaplib's tag prefix: our commands' tags start with it

        def get_response():
            resp = read()
            if resp and resp.startswith(tagpre) and _REFUSAL.match(resp):
                wire.refusals += 1
            return resp

        imap._get_response = get_response

    # -- commands ----------------------------------------------------------------------------------

    def mailbox(self, server_name: str) -> bytes:
        """A folder name as sent on the wire: modified UTF-7, quoted."""
        return self.client._normalise_folder(server_name)  # imapclient's quoting, kept private there

    def folder_list(self, untagged: list) -> list[tuple]:
        """LIST/LSUB untagged data -> [(attributes, separator, name)], as imapclient's list_folders()."""
        return self.client._proc_folder_list(untagged)  # imapclient's parser for data read by pipeline()

    def pipeline(self, commands: Sequence[tuple[str, tuple]]) -> list[Answer]:
        """Send commands without waiting for each answer (RFC 3501 5.5); an Answer per command, in
        order. At most PIPELINE_WINDOW commands are in flight, so the answers cannot fill our
        receive buffer while we are still sending. BAD answers are returned as they are."""
        imap = self._imap
        out: list[Answer] = []
        for i in range(0, len(commands), PIPELINE_WINDOW):
            window = [(name.upper(), args) for name, args in commands[i : i + PIPELINE_WINDOW]]
            for name, args in window:
                imap.untagged_responses.pop(_answered_as(name, args), None)  # imaplib's store of untagged data
            tags = self._sent_together(window)
            # Untagged data of this kind that came so far, also what came while an earlier command
            # completed (Dovecot answers a FETCH before the NOOP in front of it completes). A batch of
            # one kind (STATUS) is told apart by content (imap_parse.statuses_by_name), not by this split.
            out += [self._answer(name, args, tag) for (name, args), tag in zip(window, tags, strict=True)]
        return out

    def open_folder(self, before: Sequence[tuple[str, tuple]], command: str, mailbox: bytes,
                    fetches: Sequence[str]) -> Opening:
        """The commands `before` (in the folder selected now), SELECT or EXAMINE `mailbox`, then UID
        FETCH 1:* of each item list in `fetches`, sent together and read in one round trip. If the
        SELECT fails no folder is selected (RFC 3501 6.3.1), so the FETCHes fail too (BAD)."""
        imap = self._imap
        # imaplib's own select() does these two: state and untagged data belong to the new folder.
        imap.untagged_responses = {}
        state, imap.state = imap.state, "SELECTED"  # imaplib refuses UID outside SELECTED
        before = [(n.upper(), args) for n, args in before]
        try:
            tags = self._sent_together(list(before) + [(command, (mailbox,))] +
                                       [("UID", ("FETCH", "1:*", items)) for items in fetches])
            # tags: before's, then the SELECT's and the FETCHes': zip stops at the end of before's
            answers = [self._answer(n, args, tag) for (n, args), tag in zip(before, tags, strict=False)]
            if before:
                # Left from the folder selected before (a NOOP's EXISTS): imapclient reads the first
                # EXISTS it finds. The SELECT's own answer comes after (a server runs a SELECT only
                # once the commands before it are done); the caller checks it all the same.
                imap.untagged_responses = {}
            typ, data = _completion(imap, command, tags[len(before)])
            imap.state = "SELECTED" if typ == "OK" else "AUTH"
            imap.is_readonly = command == "EXAMINE"
            # imapclient's parser of a SELECT answer, for one it did not read itself.
            info = self.client._process_select_response(imap.untagged_responses) if typ == "OK" else None
            # FETCH lines already read stay: the server may answer the FETCH before the SELECT's completion.
            ok = all(_completion(imap, "FETCH", tag)[0] == "OK" for tag in tags[len(before) + 1:])
        except (imaplib.IMAP4.abort, OSError, EOFError):
            imap.state = state if state != "SELECTED" else "AUTH"
            raise
        fetched = imap._untagged_response("OK", [], "FETCH")[1] if ok else None  # imaplib's pop of FETCH data
        return Opening(answers, typ, data, info, "READ-ONLY" in imap.untagged_responses, fetched)

    def quota_lines(self, mailbox: bytes) -> list[bytes]:
        """The untagged QUOTA lines GETQUOTAROOT answers (imaplib's command: imapclient's
        get_quota_root fails on a root without a QUOTA line); a NO/BAD raises imaplib's error."""
        typ, data = self._imap.getquotaroot(mailbox)
        if typ != "OK":
            raise imaplib.IMAP4.error(dec(data[-1]) if data else typ)
        return [line for line in (data[1] if len(data) > 1 else []) if isinstance(line, bytes)]

    def uid_fetch(self, uids: str, items: str) -> list:
        """imaplib's data of one UID FETCH; a NO/BAD raises imaplib's error."""
        typ, data = self._imap.uid("FETCH", uids, items)  # imapclient's fetch() parses every answer: too slow
        if typ != "OK":
            raise imaplib.IMAP4.error(dec(data[-1]) if data else typ)
        return data

    def read_literals_in_place(self) -> None:
        """From now on, literals of LITERAL_INPLACE and more are read into one buffer (_read_literal)."""
        imap = self._imap
        if "read" not in vars(imap):
            # imaplib reads each literal through its `read`: replaced on the instance.
            imap.read = functools.partial(_read_literal, imap.read, imap.file)

    def append(self, mailbox: bytes, items: Sequence[AppendItem], literal_plus: bool, binary: bool) -> tuple[str, list]:
        """APPEND items to `mailbox` in one command (MULTIAPPEND when more than one) as raw literals:
        imaplib's append() rewrites line endings (bare CR/LF -> CRLF). LITERAL+ when offered; a
        literal8 when a body holds NUL and the server has BINARY. Raises Refused when the server
        refuses before a literal is sent, imaplib's error for a BAD."""
        imap = self._imap
        tag = imap._new_tag()  # imaplib's tag counter: the answer is then read by its own reader
        # Small pieces are gathered and sent together: one write per ~1 MB, not three per message
        # (small writes after a big one wait for delayed ACKs). A big body is sent as it is, never
        # copied: memory stays at one body.
        buf = bytearray(tag + b" APPEND " + mailbox)
        for item in items:
            buf += b" (" + " ".join(item.flags).encode("ascii", "replace") + b")"
            if item.internaldate:
                buf += b' "' + item.internaldate.encode("ascii") + b'"'
            use_literal8 = binary and not item.nul_free and b"\x00" in item.body  # the scan: 7% of a copy's CPU
            buf += (b" ~{" if use_literal8 else b" {") + str(len(item.body)).encode()
            if literal_plus:
                buf += b"+}\r\n"
            else:
                buf += b"}\r\n"
                imap.send(buf)
                buf.clear()
                self._wait_continuation(tag)
            if len(item.body) < SEND_COALESCE:
                buf += item.body
            else:
                imap.send(buf)
                buf.clear()
                imap.send(item.body)
            if len(buf) >= SEND_COALESCE:
                imap.send(buf)
                buf.clear()
        buf += b"\r\n"
        imap.send(buf)
        return imap._command_complete("APPEND", tag)  # imaplib's reader of the tagged answer

    # -- watching (IDLE, NOTIFY: stores/imap_watch.py speaks them over these) ----------------------

    def send_command(self, text: bytes) -> bytes:
        """A command sent as one line, its answer left to read_line(); returns its tag."""
        tag = self._imap._new_tag()  # imaplib's tag counter: its own commands must not reuse the tag
        self._imap.send(tag + b" " + text + b"\r\n")  # imaplib has no IDLE or NOTIFY
        return tag

    def send_line(self, text: bytes) -> None:
        self._imap.send(text + b"\r\n")  # IDLE's DONE: no tag

    def read_line(self, timeout: float) -> bytes | None:
        """The next line from the server (a literal in it kept inline), waiting at most timeout
        seconds for it to start; None if nothing came. A line held in imaplib's read buffer (or
        TLS's) is not seen by select(): asked of the buffer first, without blocking."""
        imap = self._imap
        if not self._buffered() and not select.select([imap.sock], [], [], timeout)[0]:
            return None
        line = imap.file.readline()  # the server sends whole lines: this returns soon
        if not line:
            raise imaplib.IMAP4.abort("socket error: EOF")
        while (m := _LITERAL_END.search(line)) is not None:
            line += imap.file.read(int(m.group(1))) + imap.file.readline()
        return line.rstrip(b"\r\n")

    def _buffered(self) -> bool:
        """Whether bytes wait in a buffer above the socket (imaplib's reader, TLS's, deflate's)."""
        imap, sock = self._imap, self._imap.sock
        if getattr(sock, "pending", lambda: 0)():
            return True
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            return bool(imap.file.peek(1))  # the buffer, or one read that cannot block
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        finally:
            sock.settimeout(timeout)

    def logout_now(self) -> None:
        """LOGOUT sent, its answer not waited for: every command before it was answered already,
        and on a WAN that wait is a round trip at the end of every run."""
        try:
            self._imap.send(self._imap._new_tag() + b" LOGOUT\r\n")  # imaplib's logout() waits for BYE
        except Exception:
            pass
        self.shutdown()

    def shutdown(self) -> None:
        try:
            self.client.shutdown()
        except Exception:
            pass

    # -- helpers ------------------------------------------------------------------------------------

    def _sent_together(self, commands: Sequence[tuple[str, tuple]]) -> list[bytes]:
        """Send commands through imaplib with their writes gathered into one: the server gets the
        whole batch in one segment and can answer it in one go. Returns their tags."""
        imap = self._imap
        own = vars(imap).get("send")  # Wire.compress() puts a compressing send on the instance
        real_send = own or imap.send
        parts: list[bytes] = []
        imap.send = parts.append  # imaplib's _command writes through send: collected for this batch
        try:
            tags = [imap._command(name, *args) for name, args in commands]  # imaplib's sender, unanswered
        finally:
            if own is None:
                del imap.send
            else:
                imap.send = own
        real_send(b"".join(parts))
        return tags

    def _answer(self, name: str, args: tuple, tag: bytes) -> Answer:
        typ, data = _completion(self._imap, name, tag)
        return typ, data, self._imap.untagged_responses.pop(_answered_as(name, args), [])

    def _wait_continuation(self, tag: bytes) -> None:
        imap = self._imap
        while imap._get_response():  # imaplib's reader: returns once a continuation ("+") came
            if imap.tagged_commands.get(tag):  # the tagged answer came instead: refused
                typ, data = imap.tagged_commands.pop(tag)
                raise Refused(dec(data[0]) if data else typ)


def _answered_as(command: str, args: tuple) -> str:
    """The untagged answer a command gets: UID FETCH is answered by FETCH lines (as imaplib's uid())."""
    return "FETCH" if command == "UID" and args and str(args[0]).upper() == "FETCH" else command


def _completion(imap, name: str, tag) -> tuple[str, list]:
    """Wait for one pipelined command's completion: (OK/NO/BAD, data). A BAD concerns that
    command only and is returned; a lost connection raises (imaplib.IMAP4.abort)."""
    try:
        return imap._command_complete(name, tag)  # imaplib's wait for one tag, any order
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as e:
        return "BAD", [str(e).encode()]


def _read_literal(plain_read, file, size: int):
    """imaplib's literal reader, without its peak of ~3x the literal for big ones.

    BufferedReader.read(n) on a socket peaks at about three times n; reading into
    one preallocated buffer keeps a 50 MB message at 50 MB. The buffer is returned
    as is (a bytearray: the engine only hashes and sends it).
    """
    if size < LITERAL_INPLACE:
        return plain_read(size)
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = file.readinto(view[got : got + (1 << 20)])
        if not n:
            raise imaplib.IMAP4.abort("connection closed while reading a literal")
        got += n
    view.release()
    return buf


# -- the lean FETCH reader -----------------------------------------------------------------------

_FETCH = re.compile(rb"\* (\d+) FETCH (.*)", re.DOTALL)
_REFUSAL = re.compile(rb"\S+ (NO|BAD)(?: |$)", re.I)


def install_lean_reader(imap) -> None:
    """A cheaper way for imaplib to read the untagged FETCH lines that make up bulk answers.

    imaplib handles every response line the same way: it formats a repr() of the line for its
    debug log, then tries three or four regular expressions on it. For a copy that is two lines
    per message body and one per metadata line. This reader takes '* N FETCH ...' lines, and
    their literals, in a few byte operations and stores them exactly as imaplib would
    (untagged_responses['FETCH']); every other line goes to imaplib's own reader. Not installed
    with --debug, which wants imaplib's trace of every line."""
    cls = type(imap)
    plain_get_line = cls._get_line.__get__(imap)  # imaplib's line reader, for the other lines
    plain_get_response = cls._get_response.__get__(imap)

    def get_line() -> bytes:
        limit = imaplib._MAXLINE  # type: ignore[attr-defined]  # imaplib's own limit on a line, private: not in typeshed
        line = imap.file.readline(limit + 1)
        if len(line) > limit:
            raise imap.error(f"got more than {limit} bytes")
        if not line:
            raise imap.abort("socket error: EOF")
        if not line.endswith(b"\r\n"):
            raise imap.abort(f"socket error: unterminated line: {line!r}")
        return line[:-2]

    def get_response():
        resp = get_line()
        m = _FETCH.match(resp)
        if m is None:
            return _by_imaplib(imap, plain_get_line, plain_get_response, resp)
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

    imap._get_response = get_response  # imaplib reads every answer through _get_response: replaced


def _by_imaplib(imap, plain_get_line: Callable[[], bytes], plain_get_response, first: bytes):
    """imaplib's own reader, handed the line already read."""
    pending = [first]

    def next_line() -> bytes:
        return pending.pop() if pending else plain_get_line()

    imap._get_line = next_line  # imaplib's reader takes its first line through _get_line: this one
    try:
        return plain_get_response()
    finally:
        del imap._get_line
