"""Follow mode (engine/follow.py) on memory stores: no network, a short poll interval.

A memory store offers neither NOTIFY nor IDLE, so these exercise the polling watch; the real
servers' NOTIFY and IDLE are in tests/e2e/test_follow.py."""
from __future__ import annotations

import dataclasses
import threading
import time
import tracemalloc
import types

import pytest

from migrator.accounts import parse_endpoint
from migrator.checkpoint import Checkpoint
from migrator.cli.options import parse_duration
from migrator.engine.copy import Engine, EngineOptions
from migrator.engine.jobs import FollowOptions
from migrator.errors import FolderError, UsageError
from migrator.naming import INBOX
from migrator.plan import FolderPlan, Plan
from migrator.stats import Stats
from migrator.stores.memory import MemoryServer, MemoryStore
from migrator.throttle import follow_limits
from tests.helpers import migrator, wait_until

FAST = {"workers": 2, "backoff_base": 0.001, "backoff_max": 0.01, "in_flight_grace": 0.0, "stop_grace": 2.0}


def wait_for(cond) -> float:
    return wait_until(cond, timeout=5.0, step=0.002)


class Following:
    """An Engine with --follow on two memory servers, running in a thread until ended."""

    def __init__(self, tmp_path, src: MemoryServer, dst: MemoryServer, delete_extra: bool = False,
                 connect_src=None, **follow):
        self.src, self.dst, self.lines = src, dst, 0
        plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                    [FolderPlan(f, f) for f in src.names()])
        self.ckpt = Checkpoint(str(tmp_path / "state.sqlite"))
        self.ckpt.bind("a@src.example", "b@dst.example")
        self.started = threading.Event()
        follow.setdefault("watch_connections", 1)
        opts = FollowOptions(poll_interval=0.01, say=self._said, on_start=self.started.set, plan_new=self._plan_new,
                             **follow)
        options = EngineOptions(**FAST, delete_extra=delete_extra, follow=opts)
        self.engine = Engine(plan, connect_src or src.connect, dst.connect, self.ckpt, options, Stats())
        self.thread = threading.Thread(target=self.engine.run, daemon=True)

    def _said(self, line: str) -> None:
        self.lines += 1  # counted, not kept: the memory test measures the follower, not the test

    @staticmethod
    def _plan_new(src, dst, known):
        sources = {fp.source for fp in known}
        return [FolderPlan(f.name, f.name) for f in src.list_folders() if f.name not in sources]

    def __enter__(self) -> Following:
        self.thread.start()
        assert self.started.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        assert self.engine.follower is not None
        self.engine.follower.ending.set()
        self.thread.join(10)
        self.ckpt.close()
        assert not self.thread.is_alive()


def test_polling_copies_new_messages_flags_and_new_folders(tmp_path):
    src, dst = MemoryServer(), MemoryServer()
    src.deliver(INBOX, b"Subject: one\r\n\r\n1\r\n")
    with Following(tmp_path, src, dst) as f:
        src.deliver(INBOX, b"Subject: two\r\n\r\n2\r\n")
        wait_for(lambda: len(dst.contents(INBOX)) == 2)
        src.change_flags(INBOX, 1, ["\\Seen", "$Important"])
        wait_for(lambda: sorted(m[1] for m in dst.contents(INBOX).values()) == [(), ("$Important", "\\Seen")])
        src.deliver(("New",), b"Subject: three\r\n\r\n3\r\n")
        wait_for(lambda: ("New",) in dst.names() and len(dst.contents(("New",))) == 1)
    assert f.engine.stats.ok and not f.engine.stats.interrupted
    assert f.lines >= 4  # the first pass, the watch, and a line per change
    assert {k: sorted(v) for k, v in ((n, src.contents(n).values()) for n in src.names())} == \
           {k: sorted(v) for k, v in ((n, dst.contents(n).values()) for n in dst.names())}


@pytest.mark.parametrize("delete_extra", [False, True])
def test_expunges_follow_only_with_delete_extra(tmp_path, delete_extra):
    src, dst = MemoryServer(), MemoryServer()
    for i in range(2):
        src.deliver(INBOX, f"Subject: {i}\r\n\r\n{i}\r\n".encode())
    with Following(tmp_path, src, dst, delete_extra=delete_extra) as f:
        wait_for(lambda: len(dst.contents(INBOX)) == 2)
        other = src.connect()
        other.select(INBOX, readonly=False)
        other.expunge_uids([1])
        src.deliver(INBOX, b"Subject: 2\r\n\r\n2\r\n")  # a change after it: both marched by then
        wait_for(lambda: len(dst.contents(INBOX)) == (2 if delete_extra else 3))
        time.sleep(0.1)  # a few polls more: nothing else changes
    assert len(dst.contents(INBOX)) == (2 if delete_extra else 3)
    assert f.engine.stats.total("deleted_extra") == int(delete_extra)


class IdleRefused(MemoryStore):
    """A source that says it has IDLE, and refuses it."""

    def __init__(self, server: MemoryServer):
        super().__init__(server)
        self.capabilities = dataclasses.replace(self.capabilities, watch="idle")

    def watch(self, names):
        raise FolderError("IDLE refused by src.example: NO not now")


def test_refused_idle_hands_its_folders_to_the_poll(tmp_path):
    """Two folders IDLEd (3 watch connections: 2 IDLE, 1 poll), IDLE refused: the poll takes them,
    changes still follow."""
    src, dst = MemoryServer(), MemoryServer()
    src.deliver(INBOX, b"Subject: one\r\n\r\n1\r\n")
    src.deliver(("Work",), b"Subject: two\r\n\r\n2\r\n")
    with Following(tmp_path, src, dst, connect_src=lambda: IdleRefused(src), watch_connections=3) as f:
        src.deliver(("Work",), b"Subject: three\r\n\r\n3\r\n")
        wait_for(lambda: len(dst.contents(("Work",))) == 2)
        assert f.engine.follower is not None and sorted(f.engine.follower.polled) == [INBOX, ("Work",)]


def test_unused_worker_connections_are_kept_alive(tmp_path):
    """Nothing changes: the workers' destination connections still get a STATUS every keepalive
    seconds (a server would drop them as idle; the next change would then log in again)."""
    src, dst = MemoryServer(), MemoryServer()
    src.deliver(INBOX, b"Subject: one\r\n\r\n1\r\n")
    with Following(tmp_path, src, dst, keepalive=0.05):
        before = dst.calls_of("status")
        time.sleep(0.3)
        assert dst.calls_of("status") >= before + 4  # two workers, several rounds each


def test_memory_stays_flat_over_many_events(tmp_path):
    """A bounded number of events (a flag set and cleared again and again) and the follower's
    memory: what it holds after 40 events and after 200 more must be about the same."""
    src, dst = MemoryServer(), MemoryServer()
    src.deliver(INBOX, b"Subject: one\r\n\r\n1\r\n")

    def toggle(n: int) -> None:
        for i in range(n):
            flags = ("\\Flagged",) if i % 2 == 0 else ()
            src.change_flags(INBOX, 1, flags)
            wait_for(lambda f=flags: dst.contents(INBOX)[1][1] == f)

    tracemalloc.start()
    try:
        with Following(tmp_path, src, dst):
            toggle(40)  # warm: caches, the journal's statements, thread pools
            before = tracemalloc.take_snapshot()
            toggle(200)
            after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 100_000, f"{grown} bytes more after 200 events"


def test_durations():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("2d") == 172800
    for bad in ("", "m", "10 minutes", "-5s", "1x"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def _ends(host_a: str, host_b: str):
    def side(host):
        return types.SimpleNamespace(endpoint=types.SimpleNamespace(host=host, is_network=True))
    return side(host_a), side(host_b)


def test_watch_connections_fit_the_cap():
    # Same host: each worker holds two connections; what is left watches; a worker less if nothing is left.
    assert follow_limits(*_ends("h", "h"), 4, 10) == (4, 2)
    assert follow_limits(*_ends("h", "h"), 4, 8) == (3, 2)
    assert follow_limits(*_ends("a", "b"), 4, 15) == (4, 11)
    assert follow_limits(*_ends("a", "b"), 1, 2) == (1, 1)
    with pytest.raises(UsageError):
        follow_limits(*_ends("h", "h"), 1, 2)


@pytest.mark.parametrize("source", ["pop3s://alice@127.0.0.1:1", "archive:///nonexistent/backup"],
                         ids=["pop3", "archive"])
def test_follow_is_refused_where_a_session_never_sees_new_mail(source, tmp_path):
    """A POP3 maildrop is fixed for the session, an archive is read as one snapshot: following
    either would wait forever for nothing. One line, exit 2, before anything is opened."""
    res = migrator("migrate", source, f"archive://{tmp_path / 'dst'}", "--follow", "--state", str(tmp_path / "s.db"))
    assert res.code == 2 and "--follow:" in res.err and "shows no mail that arrives" in res.err, res.text
    assert "Traceback" not in res.text and not (tmp_path / "dst").exists()
