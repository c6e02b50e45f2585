"""A stand-in for Microsoft 365's IMAP server: a proxy in front of Dovecot that answers like it.

Microsoft 365 cannot be reached from here. This proxy (127.0.0.1 only) reads the IMAP commands and
answers passing through, literals included, and imitates what Exchange Online is documented and
reported to do (issue 16), each behaviour switched on by the test:

- throttling (`throttle_every=N`): every Nth APPEND command is answered, without reaching Dovecot,
  `NO Request is throttled. Suggested Backoff Time: <backoff_ms> ms` (`wording`: "bare", or with a
  "[THROTTLED]" / "[UNAVAILABLE]" code; `bye=True` then closes the session with a BYE, as Exchange
  does). For `backoff_ms` after that, every APPEND on any session is throttled too: the window the
  server asked the client to keep quiet. At most `throttles` such windows are opened. With
  `one_session=True` only the session that was throttled is refused during its window (the others'
  APPENDs go through): whether a client's other sessions keep quiet is then theirs to show.
- the error budget (`error_budget=10`): a session that got that many tagged NO/BAD answers is
  closed with `* BYE`, the 10th answer sent first (Exchange's documented behaviour).
- the message size limit (`max_size=N` bytes; Exchange's is 35 MB by default): a larger APPEND is
  answered `NO [TOOBIG] Message too large` without reaching Dovecot (the wording is assumed: the
  real one is not documented; the size is read from the literal's announced length).
- `\\Flagged` given in an APPEND is dropped (`drop_flagged`); `$MDNSent` is added to the messages
  that ask for a read receipt (a `Disposition-Notification-To:` header; `add_mdnsent`): which
  messages Exchange marks is assumed, it is reported to add the keyword by itself. For these two the
  APPEND is read whole before it is forwarded (the proxy answers a synchronizing literal's `+`
  itself, and forwards with LITERAL+), so each message's flags are rewritten knowing its bytes.
- `no_multiappend`: MULTIAPPEND is taken out of the capabilities (Exchange has none).

It counts what it forwarded: `appends` holds (time, session) of every APPEND that reached Dovecot,
`windows` each throttle window (start, end), `throttled` every APPEND it refused for a throttle,
`too_big` those it refused for their size, `errors` the most NO/BAD answers any one session got,
`closed` the sessions closed on the error budget.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field

from tests.faultproxy import HOST, accept_pairs, listener

_LITERAL = re.compile(rb"~?\{(\d+)(\+?)\}\r?\n$")
_TAGGED = re.compile(rb"^(\S+) (OK|NO|BAD)\b", re.I)
_FLAGS = re.compile(rb"\(([^()]*)\)")
_WORDING = {"bare": "", "throttled": "[THROTTLED] ", "unavailable": "[UNAVAILABLE] "}
_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass
class _Session:
    client: socket.socket
    server: socket.socket
    n: int
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    errors: int = 0
    closed: bool = False


class M365StandIn:
    def __init__(self, target_port: int, *, throttle_every: int = 0, throttles: int = 1_000,
                 backoff_ms: int = 1500, wording: str = "bare", bye: bool = False, error_budget: int = 0,
                 drop_flagged: bool = False, add_mdnsent: bool = False, no_multiappend: bool = False,
                 no_literal_plus: bool = False, max_size: int = 0, one_session: bool = False):
        if wording not in _WORDING:
            raise ValueError(f"wording must be one of {sorted(_WORDING)}")
        self.target = (HOST, target_port)
        self.throttle_every, self.throttles_left, self.backoff_ms = throttle_every, throttles, backoff_ms
        self.wording, self.bye, self.error_budget = wording, bye, error_budget
        self.drop_flagged, self.add_mdnsent, self.no_multiappend = drop_flagged, add_mdnsent, no_multiappend
        self.max_size = max_size
        self.one_session = one_session
        self.window_sessions: list[int] = []  # the session each window was opened on
        self.too_big: list[int] = []  # sessions, one entry per APPEND refused for its size
        self.errors = 0  # the most NO/BAD answers one session got
        self.hidden = [c for c, off in ((b"MULTIAPPEND", no_multiappend), (b"LITERAL+", no_literal_plus)) if off]
        self.lock = threading.Lock()
        self.appends: list[tuple[float, int]] = []  # forwarded to Dovecot: (time, session)
        self.throttled: list[tuple[float, int]] = []  # refused by the stand-in: (time, session)
        self.windows: list[tuple[float, float]] = []
        self.closed = 0  # sessions closed on the error budget
        self.sessions = 0
        self._seen = 0  # APPEND commands seen, for throttle_every
        self._live: list[_Session] = []
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._listener = listener()
        self.port = self._listener.getsockname()[1]

    def __enter__(self) -> M365StandIn:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        with self.lock:
            live = list(self._live)
        for s in live:
            self._end(s)
        self._listener.close()
        for t in self._threads:
            t.join(5)

    def appends_within(self, start: float, end: float) -> int:
        """APPENDs forwarded to Dovecot in [start, end]."""
        with self.lock:
            return sum(1 for t, _s in self.appends if start <= t <= end)

    # -- sessions ------------------------------------------------------------------------------

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        accept_pairs(self._listener, self.target, self._closing, self._add_session)

    def _add_session(self, client: socket.socket, server: socket.socket) -> None:
        for sock in (client, server):  # it writes a command in pieces: no Nagle wait between them
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.sessions += 1
            s = _Session(client, server, self.sessions)
            self._live.append(s)
        self._spawn(self._up, s)
        self._spawn(self._down, s)

    def _end(self, s: _Session) -> None:
        with self.lock:
            s.closed = True
            if s in self._live:
                self._live.remove(s)
        for sock in (s.client, s.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _say(self, s: _Session, line: bytes) -> None:
        with s.send_lock:
            s.client.sendall(line)

    # -- client -> server: commands, read whole (a literal is part of its command) --------------

    def _up(self, s: _Session) -> None:
        reader = _Reader(s.client)
        try:
            while not self._closing.is_set():
                line = reader.line()
                if line is None:
                    return
                parts = line.split(b" ", 2)
                if len(parts) > 1 and parts[1].upper() == b"APPEND":
                    self._append(s, reader, parts[0], line)
                else:
                    self._forward_command(s, reader, line)
        except OSError:
            pass
        finally:
            self._end(s)

    def _forward_command(self, s: _Session, reader: _Reader, line: bytes) -> None:
        """Forward one command, line by line with its literals (a synchronizing literal waits for
        the server's '+', which the other pump passes on)."""
        while True:
            s.server.sendall(line)
            m = _LITERAL.search(line)
            if m is None:
                return
            s.server.sendall(reader.exactly(int(m.group(1))))
            line = reader.line()
            if line is None:
                return

    def _append(self, s: _Session, reader: _Reader, tag: bytes, line: bytes) -> None:
        throttle = self._throttle(s)
        refusal = throttle or self._too_big(s, line)
        if refusal is None:
            with self.lock:
                self.appends.append((time.monotonic(), s.n))
            if self.drop_flagged or self.add_mdnsent:
                self._forward_rewritten(s, reader, line)
            else:
                self._forward_command(s, reader, line)
            return
        # Refused: swallow what the client sends without waiting (LITERAL+); for a synchronizing
        # literal it waits for '+', which never comes: the NO ends the command.
        while (m := _LITERAL.search(line)) is not None and m.group(2) == b"+":
            reader.exactly(int(m.group(1)))
            line = reader.line() or b""
        self._say(s, tag + b" NO " + refusal.encode() + b"\r\n")
        if throttle and self.bye:
            self._say(s, b"* BYE " + refusal.encode() + b"\r\n")
            self._end(s)
            return
        self._count_error(s)

    def _throttle(self, s: _Session) -> str | None:
        """The throttle answer for this APPEND, or None to forward it."""
        if not self.throttle_every:
            return None
        now = time.monotonic()
        with self.lock:
            self._seen += 1
            open_window = self.windows and self.windows[-1][1] > now
            if open_window and self.one_session and s.n != self.window_sessions[-1]:
                return None
            if not open_window:
                if self._seen % self.throttle_every or self.throttles_left <= 0:
                    return None
                self.throttles_left -= 1
                self.windows.append((now, now + self.backoff_ms / 1000))
                self.window_sessions.append(s.n)
            self.throttled.append((now, s.n))
            left = max(1, int((self.windows[-1][1] - now) * 1000))
        return f"{_WORDING[self.wording]}Request is throttled. Suggested Backoff Time: {left} milliseconds"

    def _too_big(self, s: _Session, line: bytes) -> str | None:
        """The refusal of an APPEND whose (first) message is over max_size, or None."""
        m = _LITERAL.search(line)
        if not (self.max_size and m and int(m.group(1)) > self.max_size):
            return None
        with self.lock:
            self.too_big.append(s.n)
        return "[TOOBIG] Message too large"

    def _forward_rewritten(self, s: _Session, reader: _Reader, line: bytes) -> None:
        """The APPEND read whole (a synchronizing literal is answered '+' here), each message's flag
        list rewritten knowing its bytes, then sent on with LITERAL+ in one write."""
        out = []
        while (m := _LITERAL.search(line)) is not None:
            if m.group(2) != b"+":
                self._say(s, b"+ Ready for literal data\r\n")
            body = reader.exactly(int(m.group(1)))
            marker = (b"~" if line[m.start():].startswith(b"~") else b"") + b"{" + m.group(1) + b"+}\r\n"
            out += [self._rewrite_flags(line[:m.start()], body), marker, body]
            line = reader.line() or b""
        s.server.sendall(b"".join(out) + line)

    def _rewrite_flags(self, head: bytes, body: bytes) -> bytes:
        """Exchange drops \\Flagged given in an APPEND, and adds $MDNSent to a message asking for a
        read receipt (the message's flag list: the first parenthesised list before its literal)."""
        header = body[:m.start()] if (m := _HEADER_END.search(body)) else body
        mdn = self.add_mdnsent and b"disposition-notification-to:" in header.lower()

        def fix(m: re.Match) -> bytes:
            flags = [f for f in m.group(1).split() if not (self.drop_flagged and f.lower() == b"\\flagged")]
            return b"(" + b" ".join(flags + [b"$MDNSent"] * mdn) + b")"

        return _FLAGS.sub(fix, head, count=1)

    # -- server -> client: answers, whole (a FETCH literal never has a line injected into it) ---

    def _down(self, s: _Session) -> None:
        reader = _Reader(s.server)
        try:
            while not self._closing.is_set():
                line = reader.line()
                if line is None:
                    return
                unit = [line]
                while (m := _LITERAL.search(unit[-1])) is not None:
                    unit.append(reader.exactly(int(m.group(1))))
                    unit.append(reader.line() or b"")
                first = unit[0]
                if self.hidden and b"CAPABILITY" in first.upper():
                    for cap in self.hidden:
                        unit[0] = unit[0].replace(b" " + cap, b"")
                self._say(s, b"".join(unit))
                m = _TAGGED.match(first)
                if m and m.group(2).upper() in (b"NO", b"BAD"):
                    self._count_error(s)
        except OSError:
            pass
        finally:
            self._end(s)

    def _count_error(self, s: _Session) -> None:
        with self.lock:
            s.errors += 1
            self.errors = max(self.errors, s.errors)
            over = bool(self.error_budget) and s.errors >= self.error_budget
            if over:
                self.closed += 1
        if over:
            self._say(s, b"* BYE Session closed: too many errors\r\n")
            self._end(s)


class _Reader:
    """Whole lines and exact byte counts from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, b""

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def line(self) -> bytes | None:
        while (end := self.buf.find(b"\n")) < 0:
            if not self._more():
                return None
        out, self.buf = self.buf[:end + 1], self.buf[end + 1:]
        return out

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise OSError("closed within a literal")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out
