"""--follow against a real Dovecot: changes reach the destination within 2 s, by NOTIFY, by IDLE,
and by polling on open connections (a proxy takes IDLE and NOTIFY out of the capabilities); no
new login while following; SIGTERM ends with exit 0; kill -9 then a rerun leaves no duplicate.

The source is always reached through tests/faultproxy.py, whose connection count is the number
of logins migrator made to it."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import rig
from tests.faultproxy import FaultProxy
from tests.helpers import migrator, simple_message, wait_until

pytestmark = pytest.mark.e2e

LATENCY = 2.0  # seconds: the bound for a change to reach the destination on a LAN


class Following:
    """`migrator migrate SRC DST --follow` as a child process, its stdout read line by line."""

    def __init__(self, src: rig.Account, dst: rig.Account, tmp_path: Path, *extra: str, plan: Path | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
        env.update(src.env("src"))
        env.update(dst.env("dst"))
        command = ["run", str(plan)] if plan else ["migrate", src.url, dst.url]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "migrator", *command, "--state", str(tmp_path / "state.sqlite"),
             "--follow", "--follow-for", "60s", "--workers", "2", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
        except ValueError:  # end()'s communicate() closed stdout under this loop: the lines are seen
            pass

    def wait_line(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.proc.stderr.read()}"
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} in {self.lines}")

    def end(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _out, err = self.proc.communicate(timeout=30)
        self._reader.join(5)
        return self.proc.returncode, err


def reached(check) -> float:
    """Seconds until check() held (looked at every 10 ms)."""
    return wait_until(check, timeout=10.0)


def arrivals(changes: list, held, timeout: float = 10.0, spacing: float = 0.1) -> list[float]:
    """Make the changes one by one, `spacing` seconds apart, without waiting for them (Dovecot tells
    a change about 0.5 s after it: waiting for each would take that long each); returns each
    change's latency, from its making until held() (how many of them the destination holds) counts it."""
    made: list[float] = []
    seen: list[float] = []
    deadline = time.monotonic() + timeout + spacing * len(changes)
    while len(seen) < len(changes):
        assert time.monotonic() < deadline, f"{len(seen)} of {len(changes)} changes reached the destination"
        if len(made) < len(changes) and (not made or time.monotonic() - made[-1] >= spacing):
            changes[len(made)]()
            made.append(time.monotonic())
        now, n = time.monotonic(), min(held(), len(made))
        seen += [now - made[i] for i in range(len(seen), n)]
        time.sleep(0.01)
    return seen


def count(c, folder: str = "INBOX") -> int:
    return c.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"]


def flags_of(c, folder: str = "INBOX") -> dict[int, set]:
    c.select_folder(folder, readonly=True)
    return {uid: set(d[b"FLAGS"]) for uid, d in c.fetch(c.search("ALL"), ["FLAGS"]).items()}


def new_mail_and_a_flag(s, d, flag: bytes) -> list[float]:
    """Three messages appended to INBOX (which holds one), then `flag` set on the second: each
    change's latency to the destination."""
    waits = arrivals([lambda i=i: s.append("INBOX", simple_message(i)) for i in range(1, 4)], lambda: count(d) - 1)
    s.select_folder("INBOX")
    s.add_flags([2], [flag])
    return waits + [reached(lambda: flag in flags_of(d)[2])]


def proxied(account: rig.Account, proxy: FaultProxy) -> rig.Account:
    return dataclasses.replace(account, port=proxy.port)


def test_notify_each_change_within_2s_no_new_login_and_sigterm_exits_0(src_account, dst_account, tmp_path):
    """Dovecot offers NOTIFY: 20 messages appended one by one, then flag and keyword changes, then
    a new folder, each on the destination within 2 s; a line printed per change; the source sees no
    login after following began, also while quiet; SIGTERM ends it with exit 0, both sides identical."""
    s, d = rig.connect(src_account), rig.connect(dst_account)
    s.append("INBOX", simple_message(0))
    with FaultProxy(src_account.port) as proxy:
        f = Following(proxied(src_account, proxy), dst_account, tmp_path)
        assert "NOTIFY" in f.wait_line("following the source:")
        logins = proxy.connections
        waits = arrivals([lambda i=i: s.append("INBOX", simple_message(i)) for i in range(1, 21)],
                         lambda: count(d) - 1)
        s.select_folder("INBOX")
        waits += arrivals([lambda u=u: s.add_flags([u], [b"\\Flagged", b"$Work"]) for u in (1, 5, 9)],
                          lambda: sum({b"\\Flagged", b"$Work"} <= fl for fl in flags_of(d).values()))
        s.create_folder("Projects/2026")  # a new folder: NOTIFY's LIST event; planned, created, copied
        s.append("Projects/2026", simple_message(30))
        waits.append(reached(lambda: "Projects/2026" in [n for _f, _s, n in d.list_folders()]
                             and count(d, "Projects/2026") == 1))
        time.sleep(1.0)  # quiet
        assert proxy.connections == logins, "logged in again while following"
        code, err = f.end()
    assert code == 0, err
    assert max(waits) < LATENCY, waits
    # A line per folder and kind of change: "follow: INBOX: N new message(s) copied" (changes that
    # come within one march are told together)
    copied = [int(line.split()[2]) for line in f.lines if line.startswith("follow: INBOX:") and "new message" in line]
    assert sum(copied) == 20, f.lines
    assert sum(int(line.split()[-2]) for line in f.lines if "flags updated on" in line) == 3, f.lines
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def test_kill_9_while_following_then_a_rerun_is_identical_without_duplicates(src_account, dst_account, tmp_path):
    """`run PLAN --follow --quiet` prints nothing while following; a kill -9 in the middle of
    changes, more changes, then a plain `run PLAN`: each source message is on the destination
    once, flags as on the source."""
    s = rig.connect(src_account)
    for i in range(3):
        s.append("INBOX", simple_message(i))
    plan = tmp_path / "plan.toml"
    res = migrator("plan", src_account.url, dst_account.url, "-o", str(plan), src=src_account, dst=dst_account)
    assert res.code == 0, res.text
    f = Following(src_account, dst_account, tmp_path, "--quiet", plan=plan)
    d = rig.connect(dst_account)
    reached(lambda: count(d) == 3)
    time.sleep(0.3)  # the watch is set up once the first pass is over
    for i in range(3, 13):
        s.append("INBOX", simple_message(i))
    reached(lambda: count(d) >= 5)
    code, _err = f.end(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert f.lines == []  # --quiet
    s.append("INBOX", simple_message(13))
    s.select_folder("INBOX")
    s.add_flags([2], [b"\\Answered"])
    res = migrator("run", str(plan), "--state", str(tmp_path / "state.sqlite"), "--quiet",
                   src=src_account, dst=dst_account)
    assert res.code == 0, res.text
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)  # sorted lists: a duplicate would show


def test_lost_connections_are_opened_again(src_account, dst_account, tmp_path):
    """Every session of the source user killed on the server while following: the watch and the
    workers connect again (with the usual backoff) and a message delivered after it is copied."""
    s = rig.connect(src_account)
    s.append("INBOX", simple_message(0))
    f = Following(src_account, dst_account, tmp_path)
    f.wait_line("following the source:")
    assert src_account.dovecot.kill_sessions(src_account.user) >= 3  # the watch, two workers (and ours)
    rig.connect(src_account).append("INBOX", simple_message(1))
    d = rig.connect(dst_account)
    assert reached(lambda: count(d) == 2) < 5.0
    code, err = f.end()
    assert code == 0, err
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def test_idle_where_no_notify(src_account, dst_account, tmp_path):
    """A source with IDLE but no NOTIFY: with 4 connections for one worker (2) on this host, INBOX
    is IDLEd and one connection polls the other folders (every 30 s: too slow to matter here), so
    INBOX's changes come by IDLE within 2 s."""
    s, d = rig.connect(src_account), rig.connect(dst_account)
    s.create_folder("Other")
    s.append("INBOX", simple_message(0))
    with FaultProxy(src_account.port, rewrite_down=lambda data: data.replace(b" NOTIFY", b"")) as proxy:
        f = Following(proxied(src_account, proxy), dst_account, tmp_path, "--workers", "1",
                      "--max-connections-per-host", "4")
        line = f.wait_line("following the source:")
        assert "IDLE on 1 folder(s)" in line and "STATUS every 30 s" in line, line
        logins = proxy.connections
        waits = new_mail_and_a_flag(s, d, b"\\Seen")
        assert proxy.connections == logins
        code, err = f.end()
    assert code == 0, err
    assert max(waits) < LATENCY, waits
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def test_polling_on_open_connections_where_neither_notify_nor_idle(src_account, dst_account, tmp_path):
    """A source with neither NOTIFY nor IDLE (a proxy takes both out of every capability list):
    STATUS polls every --poll-interval on the connections already open, no new login; new
    messages, flag changes and a new folder follow."""
    s, d = rig.connect(src_account), rig.connect(dst_account)
    s.append("INBOX", simple_message(0))

    def without_push(data: bytes) -> bytes:
        return data.replace(b" NOTIFY", b"").replace(b" IDLE", b"")

    with FaultProxy(src_account.port, rewrite_down=without_push) as proxy:
        f = Following(proxied(src_account, proxy), dst_account, tmp_path, "--poll-interval", "0.3")
        assert "STATUS every 0.3 s" in f.wait_line("following the source:")
        logins = proxy.connections
        waits = new_mail_and_a_flag(s, d, b"$Later")
        s.create_folder("Projects")
        s.append("Projects", simple_message(9))
        waits.append(reached(lambda: "Projects" in [n for _f, _s, n in d.list_folders()] and count(d, "Projects") == 1))
        time.sleep(1.0)  # three polls more, quiet
        assert proxy.connections == logins, "polling logged in again"
        code, err = f.end()
    assert code == 0, err
    assert max(waits) < LATENCY, waits
    assert f.wait_line("new folder Projects -> Projects")
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)
