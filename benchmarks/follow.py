"""Issue 15: follow mode, measured on throwaway Dovecot instances (tests/rig.py) on 127.0.0.1.

    python benchmarks/follow.py                    # latency over 20 events by NOTIFY, IDLE and polling
    python benchmarks/follow.py --memory-minutes 5  # and RSS of the migrator over a 5-minute follow
    python benchmarks/follow.py --held 10000 --modes NOTIFY   # each change marches a 10,000-message INBOX

Latency: `migrate SRC DST --follow` runs as a child; a message is APPENDed to the source INBOX and
the time until the destination's STATUS shows it is measured, one event after the other. For the
IDLE and polling rows tests/faultproxy.py sits before the source and takes NOTIFY (and IDLE) out
of what it says.

Memory: during the follow an event every --every seconds (a new message, then a flag set, in
turn) and the child's VmRSS read from /proc every 10 s: at the start of following, its maximum,
and at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import rig  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.helpers import simple_message  # noqa: E402

MODES = {  # what the source says it can do -> the proxy's rewrite of its answers
    "NOTIFY": None,
    "IDLE": lambda data: data.replace(b" NOTIFY", b""),
    "polling (--poll-interval 1)": lambda data: data.replace(b" NOTIFY", b"").replace(b" IDLE", b""),
}


def start_follow(src: rig.Account, dst: rig.Account, state: str, *extra: str) -> subprocess.Popen:
    """The child, once its "following the source" line came (its later lines are left in the pipe:
    a few per change, far below what the pipe holds in these runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update({**src.env("src"), **dst.env("dst"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "migrate", src.url, dst.url, "--state", state,
                             "--follow", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "following the source:" in line:
            return proc
    raise SystemExit(f"migrator exited {proc.wait()}: {proc.stderr.read() if proc.stderr else ''}")


def until(check, proc: subprocess.Popen, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"an event never reached the destination: {proc.communicate()}")
        time.sleep(0.005)
    return time.monotonic() - start


def latency(server: rig.Dovecot, mode: str, events: int, held: int = 1) -> list[float]:
    """held: messages in INBOX before following (each change's march lists the whole folder)."""
    src, dst = server.new_user("fs"), server.new_user("fd")
    s, d = rig.connect(src), rig.connect(dst)
    rig.seed(src, ["INBOX"], [simple_message(i) for i in range(held)])
    with tempfile.TemporaryDirectory() as tmp, FaultProxy(src.port, rewrite_down=MODES[mode]) as proxy:
        extra = ("--poll-interval", "1") if mode.startswith("polling") else ()
        proc = start_follow(dataclasses.replace(src, port=proxy.port), dst, f"{tmp}/state.sqlite", *extra)
        waits = []
        try:
            for i in range(1, events + 1):
                s.append("INBOX", simple_message(held + i))
                waits.append(until(lambda n=held + i: d.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"] == n, proc))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    return waits


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(server: rig.Dovecot, minutes: float, every: float) -> tuple[int, int, int, int]:
    src, dst = server.new_user("ms"), server.new_user("md")
    rig.seed(src, ["INBOX"], [simple_message(i) for i in range(200)])
    s = rig.connect(src)
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_follow(src, dst, f"{tmp}/state.sqlite")  # not --quiet: its line says when following began
        start = rss_kb(proc.pid)
        peak, events, last_sample = start, 0, time.monotonic()
        end = time.monotonic() + minutes * 60
        try:
            while time.monotonic() < end:
                if events % 2 == 0:
                    s.append("INBOX", simple_message(1000 + events))
                else:
                    s.select_folder("INBOX")
                    s.set_flags([1], [b"\\Flagged"] if events % 4 == 1 else [])
                events += 1
                time.sleep(every)
                if time.monotonic() - last_sample >= 10:
                    peak, last_sample = max(peak, rss_kb(proc.pid)), time.monotonic()
            final = rss_kb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    return start, max(peak, final), final, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--held", type=int, default=1, help="messages in INBOX before following")
    ap.add_argument("--modes", default="NOTIFY,IDLE,polling", help="which rows, comma-separated")
    ap.add_argument("--memory-minutes", type=float, default=0.0)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between events in the memory run")
    args = ap.parse_args()
    with rig.Dovecot(name="follow-bench") as server:
        print("| source offers | INBOX holds | events | median s | max s |\n|---|---|---|---|---|")
        for mode in [m for m in MODES if m.split()[0] in args.modes.split(",")]:
            waits = latency(server, mode, args.events, args.held)
            print(f"| {mode} | {args.held} | {len(waits)} | {statistics.median(waits):.3f} | {max(waits):.3f} |",
                  flush=True)
        if args.memory_minutes:
            start, peak, final, events = memory(server, args.memory_minutes, args.every)
            print(f"\nmemory over a {args.memory_minutes:g}-minute follow, {events} events "
                  f"(one every {args.every:g} s): RSS {start / 1024:.1f} MB when following began, "
                  f"peak {peak / 1024:.1f} MB, {final / 1024:.1f} MB at the end")


if __name__ == "__main__":
    main()
