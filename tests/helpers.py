"""Running the real CLI as a user would: a subprocess, its exit code, its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.rig import Account


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def migrator(*args: str, src: Account | None = None, dst: Account | None = None, env: dict | None = None,
             timeout: float = 600, cwd: str | None = None) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    if src is not None:
        full_env.update(src.env("src"))
    if dst is not None:
        full_env.update(dst.env("dst"))
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def migrate(src: Account, dst: Account, tmp_path: Path, *extra: str, report: str = "report.json",
            env: dict | None = None) -> tuple[Result, dict]:
    """migrate src -> dst with a state file and a JSON report under tmp_path."""
    rep = tmp_path / report
    res = migrator("migrate", src.url, dst.url, "--state", str(tmp_path / "state.sqlite"), "--report", str(rep),
                   "--quiet", *extra, src=src, dst=dst, env=env)
    data = json.loads(rep.read_text()) if rep.exists() else {}
    return res, data


def interruptible() -> None:
    """preexec_fn for a child the test will stop with SIGINT: SIGINT at its default, so Python in
    the child raises KeyboardInterrupt for it. A child inherits an ignored SIGINT (a suite started
    as `cmd &` from a script ignores it), and Python then leaves it ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(cond, timeout: float = 10.0, step: float = 0.01) -> float:
    """Seconds until cond() held, looked at every `step` seconds; fails the test after timeout."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"not reached in {timeout} s"
        time.sleep(step)
    return time.monotonic() - start


def multiset(snapshot_folder: list) -> Counter:
    return Counter((sha, tuple(flags), date) for sha, flags, date in snapshot_folder)


def dt(days: int = 0, tz_hours: int = 2) -> datetime:
    """A fixed, timezone-aware INTERNALDATE for seeding."""
    base = datetime(2019, 3, 14, 15, 9, 26, tzinfo=timezone(timedelta(hours=tz_hours)))
    return base + timedelta(days=days)


def simple_message(i: int, body: str = "hello", msgid: bool = True, extra_headers: str = "") -> bytes:
    mid = f"Message-ID: <m{i}@test.example>\r\n" if msgid else ""
    return (
        f"From: Sender {i} <s{i}@example.com>\r\nTo: r@example.com\r\nSubject: message {i}\r\n"
        f"Date: Thu, 14 Mar 2019 15:09:26 +0200\r\n{mid}{extra_headers}\r\n{body} {i}\r\n"
    ).encode()
