"""The real Engine between two MemoryServers (migrator/stores/memory.py): no network, milliseconds.

Each scenario ends with the same check as the conformance suite's, on stores whose contents a test
can read directly: every source message is on the destination identical (bytes, flags, keywords,
INTERNALDATE), once, or the run reported it.

Crashes: crashpoints.crash() kills the process with SIGKILL. Here its kill is replaced by one that
takes what a kill -9 leaves at that instant (both servers as they are, the state file as it is on
disk) and stops the run; the rerun starts from those copies, so nothing the dying run did after
the crash point counts.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import types
from collections import Counter

import pytest

from migrator.accounts import parse_endpoint
from migrator.checkpoint import Checkpoint
from migrator.engine import crashpoints
from migrator.engine.copy import Engine, EngineOptions
from migrator.naming import INBOX
from migrator.plan import FolderPlan, Plan
from migrator.stats import Stats
from migrator.stores.memory import MemoryServer, munge8bit, time_t_wrap
from tests.stores.corpus import (
    BARE_LF,
    EIGHT_BIT,
    KEYWORDS,
    LONG_LINE,
    NUL,
    PLAIN,
    TWINS,
    Sample,
)

FOLDERS = {
    INBOX: PLAIN + KEYWORDS + [NUL, LONG_LINE, BARE_LF],
    ("Work", "Projects"): [EIGHT_BIT] + PLAIN[:2],
    ("Twins",): TWINS,
}
FAST = {"workers": 2, "batch_count": 2, "chunk_messages": 3, "backoff_base": 0.001, "backoff_max": 0.01,
        "in_flight_grace": 0.0, "stop_grace": 2.0}


def seeded(**options) -> MemoryServer:
    server = MemoryServer(**options)
    for folder, samples in FOLDERS.items():
        server.create(folder)
        for s in samples:
            server.deliver(folder, s.body, s.flags, s.date)
    return server


class World:
    """Two servers and a state file: one migration, run as often as a test likes."""

    def __init__(self, src: MemoryServer, dst: MemoryServer, state: str):
        self.src, self.dst, self.state = src, dst, state

    def run(self, stop: threading.Event | None = None, **options) -> Stats:
        plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                    [FolderPlan(f, f) for f in self.src.names()])
        ckpt = Checkpoint(self.state)
        try:
            ckpt.bind("a@src.example", "b@dst.example")
            return Engine(plan, self.src.connect, self.dst.connect, ckpt, EngineOptions(**{**FAST, **options}),
                          Stats(), stop).run()
        finally:
            ckpt.close()


@pytest.fixture
def world(tmp_path):
    return World(seeded(), MemoryServer(), str(tmp_path / "state.sqlite"))


def held(server: MemoryServer) -> dict:
    """Folder -> multiset of (bytes, flags, INTERNALDATE) the server holds."""
    return {name: Counter(server.contents(name).values()) for name in server.names()}


def assert_identical(world: World, but: set[bytes] = frozenset()) -> None:
    """The destination holds each source message identical and once (those whose bytes are in
    `but` excepted), and nothing else."""
    src, dst = held(world.src), held(world.dst)
    assert set(dst) <= set(src)
    for name, messages in src.items():
        got = Counter({m: n for m, n in dst.get(name, Counter()).items() if m[0] not in but})
        assert got == Counter({m: n for m, n in messages.items() if m[0] not in but}), name


def failures(stats: Stats) -> list[str]:
    return [f.reason for f in stats.failures]


def test_a_copy_is_identical_and_a_rerun_copies_nothing(world):
    stats = world.run()
    assert stats.ok, (failures(stats), stats.folder_errors)
    assert stats.total("copied") == sum(len(v) for v in FOLDERS.values())
    assert_identical(world)

    uidnexts = {name: world.dst.box(name).uidnext for name in world.dst.names()}
    again = world.run()
    assert again.ok and again.total("copied") == 0
    assert {name: world.dst.box(name).uidnext for name in world.dst.names()} == uidnexts  # nothing appended
    assert_identical(world)


def test_a_rerun_brings_changed_flags_in_step(world):
    world.run()
    world.src.change_flags(INBOX, 1, ("\\Flagged", "$Label1"))
    again = world.run()
    assert again.ok and again.total("copied") == 0 and again.total("flags_updated") == 1
    assert_identical(world)


@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
def test_a_refused_append_is_reported_and_the_rest_copied(tmp_path, uidplus):
    world = World(seeded(), MemoryServer(uidplus=uidplus), str(tmp_path / "s.sqlite"))
    world.dst.refuse_appends(match=lambda body: body == KEYWORDS[0].body, text="APPEND [OVERQUOTA] refused")
    stats = world.run()
    assert [(f.folder, f.uid) for f in stats.failures] == [("INBOX", 5)]
    assert "OVERQUOTA" in stats.failures[0].reason
    assert_identical(world, but={KEYWORDS[0].body})


ONE_BY_ONE = pytest.param(False, id="one-by-one")


@pytest.mark.parametrize("multiappend", [pytest.param(True, id="multiappend"), ONE_BY_ONE])
@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
def test_keywords_refused_by_the_destination_are_reported(tmp_path, uidplus, multiappend):
    """A destination that refuses keywords (GNU imap4d: BAD) refuses the messages that carry them,
    each reported; the others of the same APPEND batch are copied once."""
    world = World(seeded(), MemoryServer(uidplus=uidplus, multiappend=multiappend, keywords=False),
                  str(tmp_path / "s.sqlite"))
    stats = world.run(batch_count=8, chunk_messages=100)
    assert [(f.folder, f.uid) for f in stats.failures] == [("INBOX", 5)]
    assert "Unrecognized flag" in stats.failures[0].reason
    assert_identical(world, but={KEYWORDS[0].body})


@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
@pytest.mark.parametrize("commit", [False, True], ids=["lost-before", "answer-lost"])
@pytest.mark.parametrize("method", ["append", "fetch", "list_messages", "select"])
def test_a_dropped_connection_is_retried_and_ends_identical(tmp_path, method, commit, uidplus):
    world = World(seeded(), MemoryServer(uidplus=uidplus), str(tmp_path / "s.sqlite"))
    side = world.src if method == "fetch" else world.dst
    side.drop_connection(method, nth=2, commit=commit)
    stats = world.run()
    assert stats.ok, (failures(stats), stats.folder_errors)
    assert any("lost" in w for w in stats.warnings), stats.warnings  # it did happen, and was retried
    assert_identical(world)
    assert world.run().total("copied") == 0


@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
def test_a_same_size_rewrite_is_reported_as_altered_and_not_copied_again(tmp_path, uidplus):
    world = World(seeded(), MemoryServer(uidplus=uidplus), str(tmp_path / "s.sqlite"))
    world.dst.rewrite(munge8bit)
    stats = world.run()
    assert [(f.folder, f.uid) for f in stats.failures] == [("Work/Projects", 1)]
    assert "changed the message" in stats.failures[0].reason
    assert "8-bit octet(s) in the header replaced" in stats.failures[0].reason
    stored = [body for body, _f, _d in world.dst.contents(("Work", "Projects")).values()]
    assert munge8bit(EIGHT_BIT.body) in stored and len(munge8bit(EIGHT_BIT.body)) == len(EIGHT_BIT.body)
    assert_identical(world, but={EIGHT_BIT.body, munge8bit(EIGHT_BIT.body)})

    count = sum(len(world.dst.contents(n)) for n in world.dst.names())
    again = world.run()
    assert again.total("copied") == 0
    assert [(f.folder, f.uid) for f in again.failures] == [("Work/Projects", 1)]  # reported again
    assert sum(len(world.dst.contents(n)) for n in world.dst.names()) == count


def test_an_acknowledged_but_lost_message_is_reported_then_copied_by_the_next_run(tmp_path):
    world = World(seeded(), MemoryServer(uidplus=False), str(tmp_path / "s.sqlite"))
    world.dst.lose_appends(match=lambda body: body == PLAIN[2].body, times=1)
    stats = world.run()
    assert sorted((f.folder, f.uid) for f in stats.failures) == [("INBOX", 3)]
    assert "does not hold the message" in stats.failures[0].reason
    assert_identical(world, but={PLAIN[2].body})

    again = world.run(retry_failed=True)
    assert again.ok and again.total("copied") == 1
    assert_identical(world)


def test_an_append_committed_late_leaves_one_copy(tmp_path):
    """An APPEND whose connection is lost lands after the run sent the message again (a server
    commits what it read whenever it gets to it): the next run removes the copy sent again."""
    world = World(seeded(), MemoryServer(late_commits=True), str(tmp_path / "s.sqlite"))
    world.dst.hold_appends(match=lambda body: body == PLAIN[1].body, times=1)
    stats = world.run()
    assert stats.ok, failures(stats)
    assert_identical(world)
    # The held APPEND lands now: its message, and any sent with it in the same MULTIAPPEND (how
    # many depends on how the workers cut the folder into chunks), are there twice.
    assert world.dst.land() >= 1
    again = world.run()
    assert again.total("copied") == 0
    assert any("committed late" in w for w in again.warnings), again.warnings
    assert_identical(world)


# -- kill -9 at each crash point, then a rerun ------------------------------------------------

class _Killed(BaseException):
    """What crash() raises here instead of SIGKILL: nothing catches it."""


def crash_at(point: str, world: World, monkeypatch, nth: int = 1, when=None, **options) -> World:
    """Run until the nth pass of `point` (counting only the passes where when() is true, if given);
    returns the world a kill -9 there leaves: the servers and the state file as they were then."""
    stop, left, passes = threading.Event(), [], []
    copy = world.state + f".{point}"

    def kill(_pid, _sig):
        crashpoints._seen = 0  # crash() calls this at every pass; the counting is done here
        if when is not None and not when():
            return
        passes.append(point)
        if len(passes) < nth or left:
            return
        for suffix in ("", "-wal"):
            if os.path.exists(world.state + suffix):
                shutil.copyfile(world.state + suffix, copy + suffix)
        left.append(World(world.src.copy(), world.dst.copy(), copy))
        stop.set()
        raise _Killed(point)

    monkeypatch.setattr(crashpoints, "_name", point)
    monkeypatch.setattr(crashpoints, "_at", 1)
    monkeypatch.setattr(crashpoints, "_seen", 0)
    monkeypatch.setattr(crashpoints, "os", types.SimpleNamespace(getpid=os.getpid, kill=kill))
    hook = threading.excepthook
    monkeypatch.setattr(threading, "excepthook", lambda a: None if a.exc_type is _Killed else hook(a))
    world.run(stop=stop, **options)
    monkeypatch.setattr(crashpoints, "_name", "")
    assert left, f"the run never passed crash point {point} ({nth} times)"
    return left[0]


POINTS = ["march-listed", "fetched", "intent-written", "append-sent", "confirmed", "end-deferred"]


@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
@pytest.mark.parametrize("point", POINTS)
def test_a_crash_then_a_rerun_ends_identical(tmp_path, monkeypatch, point, uidplus):
    world = World(seeded(), MemoryServer(uidplus=uidplus), str(tmp_path / "s.sqlite"))
    # The second pass, when there is one: a crash within the run, not at its start.
    after = crash_at(point, world, monkeypatch, nth=1 if point == "end-deferred" else 2, workers=1)
    stats = after.run()
    assert stats.ok, (failures(stats), stats.folder_errors)
    assert_identical(after)
    assert after.run().total("copied") == 0


@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
def test_crashes_while_adopting_and_setting_flags_then_a_rerun_ends_identical(tmp_path, monkeypatch, uidplus):
    """Crash after APPENDs were stored but not confirmed; crash again while the rerun adopts them;
    change flags on the source and crash while they are set; the last rerun ends identical."""
    world = World(seeded(), MemoryServer(uidplus=uidplus), str(tmp_path / "s.sqlite"))
    world = crash_at("append-sent", world, monkeypatch, nth=3, workers=1)
    world = crash_at("adopted", world, monkeypatch, workers=1)
    world.run()
    for uid, (_body, flags, _date) in world.src.contents(INBOX).items():
        world.src.change_flags(INBOX, uid, set(flags) ^ {"\\Flagged"})
    world = crash_at("flags-set", world, monkeypatch, nth=2, workers=1)
    stats = world.run()
    assert stats.ok and stats.total("copied") == 0, failures(stats)
    assert_identical(world)


def test_a_crash_with_an_append_in_flight_then_a_late_commit(tmp_path, monkeypatch):
    """The run dies while the server still holds an APPEND it has not committed; the rerun sends
    the message again; the first APPEND lands after that; the next run removes the copy sent again."""
    world = World(seeded(), MemoryServer(late_commits=True), str(tmp_path / "s.sqlite"))
    world.dst.hold_appends(match=lambda body: body == PLAIN[1].body, times=1)
    after = crash_at("march-listed", world, monkeypatch, when=lambda: bool(world.dst._held), workers=1)
    assert after.run().ok
    assert after.dst.land() == 1
    again = after.run()
    assert again.ok and again.total("copied") == 0
    assert any("committed late" in w for w in again.warnings), again.warnings
    assert_identical(after)


BEFORE_1970 = Sample("before 1970",
                     b"From: a@example.org\r\nSubject: old\r\nDate: Thu, 13 Feb 1969 23:31:30 +0000\r\n\r\nold\r\n",
                     ("\\Seen",), "13-Feb-1969 23:31:30 +0000")


def _misdated(tmp_path, uidplus: bool) -> World:
    """A destination that keeps a date before 1970 as one in 2105, and shows the session that
    stored it the date it was given (Dovecot's Maildir)."""
    src = seeded()
    src.deliver(INBOX, BEFORE_1970.body, BEFORE_1970.flags, BEFORE_1970.date)
    dst = MemoryServer(uidplus=uidplus)
    dst.redate(time_t_wrap)
    return World(src, dst, str(tmp_path / "s.sqlite"))


def _reported_misdated(stats: Stats) -> None:
    assert [(f.folder, f.uid) for f in stats.failures] == [("INBOX", len(FOLDERS[INBOX]) + 1)], failures(stats)
    # "stored ... with another INTERNALDATE (2105...; 1969... was sent)" when it was just copied,
    # "already holds ... with another INTERNALDATE (2105...; the source's is 1969...)" when found
    assert re.search(r"with another INTERNALDATE \(23-Mar-2105 [^;]*; (the source's is )?13-Feb-1969 23:31:30 \+0000",
                     stats.failures[0].reason), stats.failures[0].reason


@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
def test_a_date_stored_as_another_is_reported_though_the_storing_session_shows_it_right(tmp_path, uidplus):
    world = _misdated(tmp_path, uidplus)
    _reported_misdated(world.run())
    assert_identical(world, but={BEFORE_1970.body})
    count = sum(len(world.dst.contents(n)) for n in world.dst.names())
    for again in (world.run(), World(world.src, world.dst, str(tmp_path / "fresh.sqlite")).run()):
        assert again.total("copied") == 0
        _reported_misdated(again)  # reported again, from the journal or by its bytes: never copied again
    assert sum(len(world.dst.contents(n)) for n in world.dst.names()) == count


def test_a_date_stored_as_another_by_a_run_that_died_before_its_check_is_reported_by_the_next(tmp_path, monkeypatch):
    world = crash_at("confirmed", _misdated(tmp_path, True), monkeypatch, nth=3, workers=1)
    _reported_misdated(world.run())
    assert_identical(world, but={BEFORE_1970.body})
    assert Counter(body for body, _f, _d in world.dst.contents(INBOX).values())[BEFORE_1970.body] == 1


def test_a_message_the_source_serves_cut_short_is_copied_as_served_and_reported_every_run(tmp_path):
    """Courier serves a message of more than 299 MIME parts cut at part 300, its listed size
    agreeing: copied as served (IMAP gives no more), reported, by every run, with or without state."""
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(300))
    cut = (f"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           f"{parts}--b\r\n").encode()
    src = seeded()
    uid = src.deliver(INBOX, cut, ("\\Seen",), "01-Feb-2020 10:00:00 +0000")
    world = World(src, MemoryServer(), str(tmp_path / "s.sqlite"))
    for stats in (world.run(), world.run(), World(src, world.dst, str(tmp_path / "fresh.sqlite")).run()):
        assert [(f.folder, f.uid) for f in stats.failures] == [("INBOX", uid)], failures(stats)
        assert "served it cut short" in stats.failures[0].reason
        assert_identical(world)  # held as served, once
