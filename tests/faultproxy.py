"""A TCP proxy for fault tests: sits between migrator and Dovecot on 127.0.0.1 and breaks things on purpose.

    with FaultProxy(account.port, cut_at=[40_000, 90_000], direction="down") as proxy:
        migrator(..., proxied(account, proxy) ...)

Faults (all bounded: a finite list of byte thresholds, a finite number of random cuts):
- cut_at: byte counts, counted over all connections together in `direction` ("up" = client to
  server, "down" = server to client, "both"); when the count crosses one, the connection carrying
  that byte is cut right there (both sockets closed, optionally with a TCP RST).
- per_connection=True: cut_at counts each connection's own bytes instead (every connection is
  cut after N bytes: a server that never lets a big command through).
- random_cuts=N: a timer cuts a random live connection N times, at random moments
  (random_every=(lo, hi) seconds apart; seeded, so a failure can be replayed).
- on_threshold: called instead of cutting (e.g. to SIGKILL the migrator mid-FETCH or mid-APPEND).
- cut_up_when: a test on what the client sends, read by read: the first `cut_up_times` reads it
  accepts are not forwarded, and their connection is cut (a given command never reaches the server).
- pause() / resume(): hold all traffic (a run that stalls without failing).
- rewrite_down: a function applied to what the server says, whole lines at a time (a server
  without an extension: strip it from CAPABILITY and its response codes).

One thread accepts, two threads per connection pump bytes; close() ends them all.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

HOST = "127.0.0.1"
MAX_CONNECTIONS = 500  # a run opens a few per worker and reconnects after each cut: far below this


class FaultProxy:
    def __init__(self, target_port: int, *, cut_at: Sequence[int] = (), direction: str = "both",
                 random_cuts: int = 0, random_every: tuple[float, float] = (0.2, 1.0), seed: int = 0,
                 rst: bool = False, per_connection: bool = False, on_threshold: Callable[[], None] | None = None,
                 rewrite_down: Callable[[bytes], bytes] | None = None,
                 cut_up_when: Callable[[bytes], bool] | None = None, cut_up_times: int = 1):
        if direction not in ("up", "down", "both"):
            raise ValueError("direction must be up, down or both")
        self.target = (HOST, target_port)
        self.direction = direction
        self._thresholds = sorted(cut_at)
        self._per_connection = per_connection
        self._own: dict[tuple, tuple[list[int], dict[str, int]]] = {}  # per_connection: pair -> state
        self._random_cuts = random_cuts
        self._random_every = random_every
        self._rng = random.Random(seed)
        self._rst = rst
        self._on_threshold = on_threshold
        self._rewrite_down = rewrite_down
        self._cut_up_when, self._cut_up_left = cut_up_when, cut_up_times
        self._lock = threading.Lock()
        self._bytes = {"up": 0, "down": 0, "both": 0}
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.cuts = 0  # how many connections were cut (thresholds and random)
        self.connections = 0
        self._listener = listener()
        self.port = self._listener.getsockname()[1]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop)
        if self._random_cuts:
            self._spawn(self._random_loop)
        return self

    def close(self) -> None:
        self._closing.set()
        self._flowing.set()
        with self._lock:
            conns = list(self._conns)
        for pair in conns:
            self._kill(pair)
        self._listener.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def bytes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bytes)

    @property
    def thresholds_left(self) -> int:
        with self._lock:
            return len(self._thresholds)

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        accept_pairs(self._listener, self.target, self._closing, self._add_pair,
                     lambda: self.connections < MAX_CONNECTIONS)

    def _add_pair(self, client: socket.socket, server: socket.socket) -> None:
        pair = (client, server)
        with self._lock:
            self._conns.append(pair)
            self.connections += 1
        self._accepted(client.getpeername())
        self._spawn(self._pump, pair, client, server, "up")
        self._spawn(self._pump, pair, server, client, "down")

    def _accepted(self, peer: tuple[str, int]) -> None:
        """A new connection from `peer` is in (for subclasses: tests/connwatch.py counts them)."""

    def _pump(self, pair, src: socket.socket, dst: socket.socket, direction: str) -> None:
        rewrite = self._rewrite_down if direction == "down" else None
        held = b""  # with rewrite: the end of the last read, up to a line's end
        try:
            while not self._closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if rewrite is not None:
                    held += data
                    cut = held.rfind(b"\n") + 1
                    if not cut:
                        continue
                    data, held = rewrite(held[:cut]), held[cut:]
                while not self._flowing.wait(0.2):
                    if self._closing.is_set():
                        return
                if direction == "up" and self._cut_up_when is not None and self._claim_cut_up(data):
                    self._cut(pair)
                    return
                send, fire = self._account(pair, direction, len(data))
                if send:
                    dst.sendall(data[:send])
                if fire:
                    if self._on_threshold is not None:
                        self._on_threshold()
                        if send < len(data):
                            dst.sendall(data[send:])
                        continue
                    self._cut(pair)
                    return
        except OSError:
            pass
        finally:
            # Half-close would keep one direction alive: end the whole pair.
            self._kill(pair)

    def _account(self, pair, direction: str, n: int) -> tuple[int, bool]:
        """Count n bytes; return how many may be sent before a threshold, and whether one fires."""
        with self._lock:
            counts = self.direction in (direction, "both")
            thresholds, totals = self._thresholds, self._bytes
            if self._per_connection:
                thresholds, totals = self._own.setdefault(
                    pair, (list(self._thresholds), {"up": 0, "down": 0, "both": 0}))
                self._bytes[direction] += n
                self._bytes["both"] += n
            start = totals["both" if self.direction == "both" else direction]
            totals[direction] += n
            totals["both"] += n
            if not counts or not thresholds or start + n < thresholds[0]:
                return n, False
            at = thresholds.pop(0)
            while thresholds and thresholds[0] <= start + n:
                thresholds.pop(0)  # several thresholds in one read: one cut
            return max(0, at - start), True

    def _claim_cut_up(self, data: bytes) -> bool:
        with self._lock:
            if self._cut_up_left <= 0 or not self._cut_up_when(data):
                return False
            self._cut_up_left -= 1
            return True

    def _random_loop(self) -> None:
        left = self._random_cuts
        while left and not self._closing.is_set():
            if self._closing.wait(self._rng.uniform(*self._random_every)):
                return
            with self._lock:
                live = list(self._conns)
            if live:
                self._cut(self._rng.choice(live))
                left -= 1

    def _cut(self, pair) -> None:
        with self._lock:
            self.cuts += 1
        if self._rst:
            for s in pair:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
        self._kill(pair, self._rst)

    def _kill(self, pair, rst: bool = False) -> None:
        with self._lock:
            if pair in self._conns:
                self._conns.remove(pair)
        for s in pair:
            try:
                # SHUT_RD wakes the other pump's recv() without sending a FIN, so close() sends the RST.
                s.shutdown(socket.SHUT_RD if rst else socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


def listener() -> socket.socket:
    """A listening socket on 127.0.0.1, on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(64)
    sock.settimeout(0.2)
    return sock


def accept_pairs(sock: socket.socket, target: tuple[str, int], closing: threading.Event,
                 on_pair: Callable[[socket.socket, socket.socket], None],
                 allow: Callable[[], bool] = lambda: True) -> None:
    """Accept clients until closing; each gets its own connection to target, handed to on_pair."""
    while not closing.is_set():
        try:
            client, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        if not allow():
            client.close()
            continue
        try:
            server = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            continue
        server.settimeout(None)
        client.settimeout(None)
        on_pair(client, server)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll predicate until true or timeout (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
