"""Benchmark migrator against its peers and the server limit, on one seeded corpus.

    python benchmarks/bench.py                       # 5,000 messages, ~250 MB
    python benchmarks/bench.py --messages 500 --mb 25 --rtt-ms 40
    python benchmarks/bench.py --memory              # peak RSS: 100,000 messages + one 50 MB

Needs: dovecot-imapd (the test rig), and for the peer rows `apt-get install -y isync interimap`
(a missing tool's row says so and is skipped). Run as root from the repo root. See README.md.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import corpus as corpus_mod  # noqa: E402
from benchmarks.proxy import ProxyProcess  # noqa: E402
from tests import rig  # noqa: E402

TIMEOUT = 3600  # per tool: every run is bounded


@dataclass
class Row:
    tool: str
    wall: float | None = None
    rss_mb: float | None = None
    identical: str = ""
    note: str = ""
    copies: bool = True  # False for a rerun: it copies nothing, so no rate


@dataclass
class Env:
    src: rig.Account
    dst_dovecot: rig.Dovecot
    src_port: int  # what tools connect to (the proxy with --rtt-ms)
    dst_port_for: object  # Account -> port tools use
    tmp: Path
    want: dict
    messages: int
    mb: float


def _tree_hwm_kb(sid: int, hwm: dict[int, int]) -> None:
    """Record VmHWM (peak RSS of one process image) of every process in session sid."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            if int(stat.rsplit(b")", 1)[1].split()[3]) != sid:  # field 6: session id
                continue
            with open(f"/proc/{entry}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        hwm[int(entry)] = max(hwm.get(int(entry), 0), int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None,
                 stdin: Path | None = None, at_once: bool = False) -> tuple[float, float, int, str]:
    """Run cmd in its own session, its standard input the file stdin (else none);
    (wall s, peak RSS MB, exit code, output tail).

    Peak RSS = sum of the VmHWM of the tool's processes, sampled every 50 ms from
    /proc (getrusage of a child forked from this big process would count the
    pages it shared with us before exec). at_once: of the processes alive at one
    sample, the largest such sum (a tool that starts a process per mailbox, one
    after the other, does not hold all of them at once).
    """
    out = tempfile.TemporaryFile()
    full_env = {**os.environ, **(env or {})}
    # Python tools start as installed ones do, from byte-compiled modules (pip compiles what it
    # installs; main() compiles migrator's), even where the shell sets PYTHONDONTWRITEBYTECODE.
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    # The previous tool's (or the seeding's) ~250 MB of dirty pages are written back now, not
    # during this tool's run: without this, whichever tool runs first is up to 2x slower.
    os.sync()
    t0 = time.monotonic()
    with open(stdin or os.devnull, "rb") as stdin_file:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=stdin_file,
                                env=full_env, cwd=cwd, start_new_session=True)
    hwm: dict[int, int] = {}
    peak_at_once = 0
    try:
        proc.wait(0.02)
    except subprocess.TimeoutExpired:
        pass
    while proc.poll() is None:
        alive: dict[int, int] = {}
        _tree_hwm_kb(proc.pid, alive)
        peak_at_once = max(peak_at_once, sum(alive.values()))
        for pid, kb in alive.items():
            hwm[pid] = max(hwm.get(pid, 0), kb)
        if time.monotonic() - t0 > TIMEOUT:
            os.killpg(proc.pid, 9)
        try:
            proc.wait(0.05)
        except subprocess.TimeoutExpired:
            pass
    wall = time.monotonic() - t0
    out.seek(0)
    text = out.read().decode(errors="replace")
    return wall, (peak_at_once if at_once else sum(hwm.values())) / 1024, proc.returncode, text[-600:]


def snapshot(acc: rig.Account) -> dict[tuple, Counter]:
    """{folder: Counter((sha256, flags))} of an account, fetched in bounded batches."""
    c = rig.connect(acc, timeout=300)
    snap: dict[tuple, Counter] = defaultdict(Counter)
    try:
        for name in rig._list(c, True):
            info = c.select_folder(name, readonly=True)
            if not info.get(b"EXISTS"):
                continue
            uids = sorted(c.search("ALL"))
            for i in range(0, len(uids), 200):
                for d in c.fetch(uids[i:i + 200], ["BODY.PEEK[]", "FLAGS"]).values():
                    flags = tuple(sorted(rig._flags(d[b"FLAGS"])))
                    snap[rig.folder_components(acc, name)][(hashlib.sha256(d[b"BODY[]"]).hexdigest(), flags)] += 1
    finally:
        c.logout()
    return dict(snap)


def compare(want: dict, got: dict, flags_carried: bool = True) -> str:
    """'yes' when every folder holds the same multiset of (sha256, flags)."""
    def bodies(s):
        return {f: Counter({sha: 0 for sha, _ in c}) + Counter(sha for (sha, _), n in c.items() for _k in range(n))
                for f, c in s.items()}

    if want == got:
        return "yes"
    bw, bg = bodies(want), bodies(got)
    if bw == bg:
        return "bodies yes, flags no" if flags_carried else "bodies yes, flags n/a"
    missing = sum((c - bg.get(f, Counter())).total() for f, c in bw.items())
    extra = sum((c - bw.get(f, Counter())).total() for f, c in bg.items())
    return f"no ({missing} missing, {extra} extra)"


# -- the tools ------------------------------------------------------------------------------


def migrator_row(e: Env, label: str, *extra: str, rerun: bool = False, root: Path = ROOT) -> Row:
    """One migrator run into a fresh destination; with rerun, the same command again (nothing new):
    the row then shows the rerun, and the note its share of the first run's time. root: the
    checkout whose migrator runs (--migrator-from: another version, in the same rounds)."""
    dst = e.dst_dovecot.new_user("d")
    work = e.tmp / f"mig-{dst.user}"
    work.mkdir()
    cmd = [sys.executable, "-m", "migrator", "migrate", f"imap://{e.src.user}@127.0.0.1:{e.src_port}",
           f"imap://{dst.user}@127.0.0.1:{e.dst_port_for(dst)}", "--state", str(work / "state.sqlite"), "--quiet", *extra]
    env = {"MIGRATOR_SRC_PASSWORD": e.src.password, "MIGRATOR_DST_PASSWORD": dst.password,
           "PYTHONPATH": str(root)}
    if os.environ.get("BENCH_PROFILE") and not extra:  # py-spy flame graph of the default run
        path = os.environ["BENCH_PROFILE"]
        fmt = "raw" if path.endswith(".txt") else "flamegraph"  # raw = collapsed stacks, greppable
        cmd = ["py-spy", "record", "-o", path, "-r", "200", "--format", fmt, *os.environ.get("BENCH_PROFILE_ARGS", "").split(), "--", *cmd]
    wall, rss, code, out = run_measured(cmd, env, cwd=str(root))
    if code != 0:
        return Row(label, wall, rss, "no", f"exit {code}: {out.strip().splitlines()[-1:] }")
    note = ""
    if rerun:
        first = wall
        wall, rss, code, out = run_measured(cmd, env, cwd=str(root))
        if code != 0:
            return Row(label, wall, rss, "no", f"rerun exit {code}")
        note = f"rerun took {100 * wall / first:.0f}% of the first run ({first:.1f} s)"
    return Row(label, wall, rss, compare(e.want, snapshot(dst)), note, copies=not rerun)


def mbsync_row(e: Env) -> Row:
    if not shutil.which("mbsync"):
        return Row("mbsync", note="skipped: mbsync not installed (apt-get install -y isync)")
    dst = e.dst_dovecot.new_user("d")
    work = e.tmp / f"mbsync-{dst.user}"
    (work / "state").mkdir(parents=True)
    conf = work / "mbsyncrc"

    def account(name, acc, port):
        return (f"IMAPAccount {name}\nHost 127.0.0.1\nPort {port}\nUser {acc.user}\nPass \"{acc.password}\"\n"
                f"SSLType None\nAuthMechs LOGIN\nPipelineDepth 64\n\nIMAPStore {name}\nAccount {name}\n\n")

    conf.write_text(account("src", e.src, e.src_port) + account("dst", dst, e.dst_port_for(dst)) +
                    f"Channel bench\nFar :src:\nNear :dst:\nPatterns *\nCreate Near\nSync Pull\n"
                    f"SyncState {work}/state/\nCopyArrivalDate yes\n")
    conf.chmod(0o600)
    wall, rss, code, out = run_measured(["mbsync", "-q", "-c", str(conf), "bench"])
    if code != 0:
        return Row("mbsync", wall, rss, "no", f"exit {code}: {out.strip()[-150:]}")
    row = Row("mbsync", wall, rss, compare(e.want, snapshot(dst)))
    if row.identical != "yes" and any(b"\r\nX-TUID: " in b for b in rig.fetch_bodies(dst, ["INBOX"])[:5]):
        row.note = "mbsync adds an X-TUID header to each copy; isync 1.4 drops keywords"
    return row


def interimap_row(e: Env) -> Row:
    if not shutil.which("interimap"):
        return Row("interimap", note="skipped: interimap not installed (apt-get install -y interimap)")
    dst = e.dst_dovecot.new_user("d")
    work = e.tmp / f"interimap-{dst.user}"
    work.mkdir()
    conf = work / "config"

    def section(name, acc, port):
        return (f"[{name}]\ntype = imap\nhost = 127.0.0.1\nport = {port}\nSTARTTLS = NO\nusername = {acc.user}\n"
                f"password = {acc.password}\ncompress = NO\n\n")

    conf.write_text(f"database = {work}/interimap.db\nlist-mailbox = *\n\n" +
                    section("local", dst, e.dst_port_for(dst)) + section("remote", e.src, e.src_port))
    conf.chmod(0o600)
    env = {"XDG_DATA_HOME": str(work), "HOME": str(work)}
    wall, rss, code, out = run_measured(["interimap", "--config", str(conf)], env)
    if code != 0:
        return Row("interimap", wall, rss, "no", f"exit {code}: {out.strip()[-150:]}")
    return Row("interimap", wall, rss, compare(e.want, snapshot(dst)))


def client_row(e: Env, mode: str, label: str) -> Row:
    dst = e.dst_dovecot.new_user("d")
    maildir = Path(e.src.dovecot.mail_dir) / e.src.user
    cmd = [sys.executable, str(ROOT / "benchmarks" / "clients.py"), mode, str(e.src_port), str(e.dst_port_for(dst)),
           e.src.user, dst.user, str(maildir)]
    env = {"BENCH_SRC_PASSWORD": e.src.password, "BENCH_DST_PASSWORD": dst.password}
    wall, rss, code, out = run_measured(cmd, env)
    if code != 0:
        return Row(label, wall, rss, "no", f"exit {code}: {out.strip()[-200:]}")
    return Row(label, wall, rss, compare(e.want, snapshot(dst)))


TOOLS = {
    "limit": lambda e: client_row(e, "limit", "server limit"),
    "migrator": lambda e: migrator_row(e, "migrator"),
    "migrator-w1": lambda e: migrator_row(e, "migrator --workers 1", "--workers", "1"),
    "mbsync": mbsync_row,
    "interimap": interimap_row,
    "naive": lambda e: client_row(e, "naive", "naive client"),
    "rerun": lambda e: migrator_row(e, "migrator rerun", rerun=True),
}


def table(rows: list[Row], messages: int, mb: float) -> str:
    head = ["tool", "wall s", "msgs/s", "MB/s", "peak RSS MB", "identical"]
    lines = []
    for r in rows:
        if r.wall is None:
            lines.append([r.tool, "-", "-", "-", "-", r.note])
            continue
        ident = r.identical + (f"; {r.note}" if r.note else "")
        rates = [f"{messages / r.wall:.0f}", f"{mb / r.wall:.1f}"] if r.copies else ["-", "-"]
        lines.append([r.tool, f"{r.wall:.1f}", *rates, f"{r.rss_mb:.0f}", ident])
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)])


def paired_ratios(runs_of: dict[str, list[Row]]) -> str:
    """Migrator's speed against each other row, round by round: two runs of one round are
    minutes apart at most, so their ratio is steadier than the ratio of two medians taken
    over the whole benchmark. Median and range of the per-round ratios."""
    lines = []
    for name, runs in runs_of.items():
        if name in ("migrator", "rerun") or name not in TOOLS:
            continue
        ratios = sorted(other.wall / mine.wall for mine, other in zip(runs_of["migrator"], runs)
                        if mine.wall and other.wall)
        if ratios:
            label = runs[0].tool
            lines.append(f"migrator's speed / {label}'s, per round: median {ratios[(len(ratios) - 1) // 2]:.2f}x "
                         f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}, {len(ratios)} rounds)")
    return "\n".join(lines)


def seed_source(acc: rig.Account, mails: list[corpus_mod.Mail]) -> None:
    by_folder = defaultdict(list)
    for m in mails:
        by_folder[m.folder].append((m.body, list(m.flags), m.date))
    folders = sorted(by_folder, key=lambda f: -len(by_folder[f]))
    c = rig.connect(acc)
    for f in sorted(folders):  # up front: concurrent CREATEs of siblings race in Dovecot
        rig.create_folder(acc, list(f), client=c)
    c.logout()
    errors = []

    def worker(mine):
        try:
            for f in mine:
                rig.seed(acc, list(f), by_folder[f], batch_bytes=4 << 20, batch_count=500)
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)

    threads = [threading.Thread(target=worker, args=(folders[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--mb", type=float, default=250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--folders", type=int, default=0,
                    help="that many folders instead of nine (the extra ones share 30%% of the messages)")
    ap.add_argument("--rtt-ms", type=float, default=0, help="route every connection through a delay proxy")
    ap.add_argument("--mbit", type=float, default=0,
                    help="with the proxy, also limit each direction of each side's link to N Mbit/s")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every tool N times, in N interleaved rounds; show each tool's median run")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    ap.add_argument("--memory", action="store_true", help="measure peak RSS on 100,000 messages + one 50 MB message")
    ap.add_argument("--memory-messages", type=int, default=100_000)
    ap.add_argument("--migrator-args", action="append", default=[], metavar="ARGS",
                    help="an extra migrator row with these options, e.g. '--workers 8' (repeatable)")
    ap.add_argument("--migrator-from", action="append", default=[], metavar="DIR",
                    help="an extra migrator row running the checkout in DIR (e.g. a worktree of the code "
                         "before a change), in the same rounds as the others (repeatable)")
    args = ap.parse_args()
    if args.memory:
        from benchmarks.memory import run_memory
        return run_memory(args.memory_messages)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    compileall.compile_dir(str(ROOT / "migrator"), quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="mgb-", dir="/tmp"))
    # COMPRESS=DEFLATE is offered only for --mbit runs: mbsync uses it whenever offered (isync
    # 1.4 has no switch), which on a fast link costs it more CPU than it saves bytes.
    src_dc = rig.Dovecot(tmp, "src", separator="/", special_use=True, compress=bool(args.mbit))
    dst_dc = rig.Dovecot(tmp, "dst", separator="/", special_use=True, compress=bool(args.mbit))
    proxies: list[ProxyProcess] = []
    try:
        src_dc.start()
        dst_dc.start()
        t = time.monotonic()
        mails = corpus_mod.build(args.messages, args.mb, args.seed, args.folders)
        total_mb = sum(len(m.body) for m in mails) / 1e6
        src = src_dc.new_user("s")
        seed_source(src, mails)
        want = corpus_mod.expected(mails)
        del mails
        print(f"corpus: {args.messages} messages, {total_mb:.0f} MB, {len(want)} folders, seed {args.seed}; "
              f"built and seeded in {time.monotonic() - t:.0f} s", flush=True)
        src_port, dst_port_for = src.port, (lambda acc: acc.port)
        if args.rtt_ms or args.mbit:
            sp = ProxyProcess(src.port, args.rtt_ms, mbit=args.mbit or None).start()
            dp = ProxyProcess(dst_dc.port, args.rtt_ms, mbit=args.mbit or None).start()
            proxies += [sp, dp]
            src_port, dst_port_for = sp.port, (lambda acc: dp.port)
        env = Env(src, dst_dc, src_port, dst_port_for, tmp, want, args.messages, total_mb)
        rows = []
        extra = {f"migrator {a}": (lambda e, a=a: migrator_row(e, f"migrator {a}", *a.split()))
                 for a in args.migrator_args}
        for d in args.migrator_from:
            compileall.compile_dir(str(Path(d) / "migrator"), quiet=1)
            extra[f"migrator@{Path(d).name}"] = (lambda e, d=d: migrator_row(e, f"migrator@{Path(d).name}", root=Path(d)))
        names = tools + list(extra)
        runs_of: dict[str, list[Row]] = {name: [] for name in names}
        # Rounds, not blocks: each round runs every tool once, starting one tool later than the
        # round before. The VM's speed drifts by up to 2x over minutes; run in blocks, a tool's
        # three runs could all land in a slow stretch and the ratios between rows would lie.
        for r in range(args.repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:
                run = (TOOLS.get(name) or extra[name])(env)
                runs_of[name].append(run)
                if args.repeat > 1:
                    print(f"  round {r + 1}: {run.tool}: {run.wall and round(run.wall, 2)} s {run.identical}",
                          flush=True)
        for name in names:
            runs = runs_of[name]
            timed = sorted((r for r in runs if r.wall is not None), key=lambda r: r.wall)
            row = timed[(len(timed) - 1) // 2] if timed else runs[0]  # the median run
            if len(timed) > 1:
                row.note = (row.note + "; " if row.note else "") + "median of " + "/".join(
                    f"{r.wall:.1f}" for r in timed) + " s"
            rows.append(row)
            print(f"  {row.tool}: {row.wall and round(row.wall, 1)} s {row.identical} {row.note}", flush=True)
        rtt = f", RTT {args.rtt_ms:g} ms (delay proxy)" if args.rtt_ms else ", loopback"
        rtt += f", {args.mbit:g} Mbit/s each way" if args.mbit else ""
        print(f"\n{args.messages} messages, {total_mb:.0f} MB{rtt}, {os.cpu_count()} CPUs\n")
        print(table(rows, args.messages, total_mb))
        if args.repeat > 1 and "migrator" in runs_of:
            print("\n" + paired_ratios(runs_of))
        return 0
    finally:
        for p in proxies:
            p.stop()
        src_dc.cleanup()
        dst_dc.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
