"""Peak RSS of migrator on a 100,000-message folder plus one 50 MB message (issue 5: < 150 MB),
and the time of the same run again with nothing new (issue 5: at most 5% of the first).

    python benchmarks/bench.py --memory [--memory-messages N]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.clients import Pusher
from tests import rig

TARGET_MB = 150


def seed_fast(acc: rig.Account, folder: str, count: int) -> None:
    """count tiny messages by pipelined MULTIAPPEND (1,000 per command)."""
    rig.create_folder(acc, [folder])
    p = Pusher(acc.port, acc.user, acc.password, window=4)
    for start in range(0, count, 1000):
        items = [(b"From: a@example.org\r\nSubject: tiny %d\r\nMessage-ID: <t%d@x>\r\n\r\nbody %d\r\n" % (i, i, i),
                  ["\\Seen"] if i % 3 else []) for i in range(start, min(count, start + 1000))]
        p.append(folder, items)
    p.finish()
    if p.errors:
        raise RuntimeError(f"seeding failed: {p.errors[0][:200]!r}")


def big_message(mb: int = 50) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return (b"From: a@example.org\r\nSubject: big\r\nMessage-ID: <big@x>\r\n\r\n" +
            line * (mb * 1_000_000 // len(line)))


def run_memory(messages: int = 100_000) -> int:
    from benchmarks.bench import ROOT, run_measured

    tmp = Path(tempfile.mkdtemp(prefix="mgm-", dir="/tmp"))
    dc = rig.Dovecot(tmp, "mem", separator="/")
    try:
        dc.start()
        src, dst = dc.new_user("s"), dc.new_user("d")
        t = time.monotonic()
        seed_fast(src, "Big", messages)
        rig.seed(src, ["INBOX"], [big_message()])
        print(f"seeded {messages} tiny messages + one 50 MB message in {time.monotonic() - t:.0f} s", flush=True)
        cmd = [sys.executable, "-m", "migrator", "migrate", src.url, dst.url, "--state", str(tmp / "state.sqlite"), "--quiet"]
        env = {"MIGRATOR_SRC_PASSWORD": src.password, "MIGRATOR_DST_PASSWORD": dst.password, "PYTHONPATH": str(ROOT)}
        wall, rss, code, out = run_measured(cmd, env, cwd=str(ROOT))
        c = rig.connect(dst)
        got = {f: c.folder_status(f, ["MESSAGES"])[b"MESSAGES"] for f in ("Big", "INBOX")}
        c.logout()
        ok = code == 0 and got == {"Big": messages, "INBOX": 1}
        print(f"migrator (default settings): {wall:.1f} s, peak RSS {rss:.0f} MB (target < {TARGET_MB} MB), "
              f"exit {code}, destination {'complete' if ok else got}")
        if code:
            print(out)
            return 1
        # The same command again, nothing new: a fast rerun costs the same whatever the folder size.
        again, again_rss, again_code, _ = run_measured(cmd, env, cwd=str(ROOT))
        print(f"rerun with nothing new: {again:.2f} s = {100 * again / wall:.1f}% of the first run "
              f"(target 5%), peak RSS {again_rss:.0f} MB, exit {again_code}")
        return 0 if ok and rss < TARGET_MB and again_code == 0 else 1
    finally:
        dc.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
