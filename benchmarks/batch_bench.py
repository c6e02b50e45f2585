"""Many small mailboxes on one Dovecot pair: `migrator batch` against imapsync-style copying under GNU parallel.

    python benchmarks/batch_bench.py                          # 200 mailboxes of 50-300 messages, one round
    python benchmarks/batch_bench.py --mailboxes 40 --repeat 3   # smaller, three interleaved rounds

Rows (every run into fresh destination users; the source is seeded once):
  migrator batch       the local pool:  --parallel P --workers W --max-connections-per-host CAP
  migrator --cluster   the same with --cluster local (a Dask LocalCluster of P worker processes)
  naive x parallel     a stand-in for imapsync + GNU parallel, the way imapsync's FAQ drives it
                       (`parallel --colsep ';' -j N imapsync --host1 ... < users.txt`): imapsync is
                       not installable here, so each job is clients.py's naive client (one connection
                       per side, one FETCH and one APPEND per message), N = CAP / 2 jobs.

Per row: mailboxes per minute, messages per second, the peak of concurrent sessions each Dovecot
held (its ends of established TCP connections, asked of the kernel every 20 ms: SessionCounter),
peak RSS (the largest sum of VmHWM over the tool's processes alive at once, as bench.py samples
it) and how many mailboxes came out identical (every folder the same multiset of (SHA-256,
flags)). Needs dovecot-imapd, GNU parallel (`apt-get install -y parallel`) and
`pip install -e '.[dask]'`; run as root from the repository root. See README.md.
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import resource
import shlex
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import corpus as corpus_mod  # noqa: E402
from benchmarks.bench import run_measured, seed_source, snapshot  # noqa: E402
from tests import rig  # noqa: E402

# sock_diag (netlink): the kernel lists the sockets of one local port in one answer.
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST_DUMP, NLMSG_DONE, NLMSG_ERROR = 4, 20, 0x301, 3, 2
TCP_ESTABLISHED = 1


@dataclass
class Mailbox:
    src: rig.Account
    want: dict  # {folder: Counter((sha256, flags))}
    messages: int


@dataclass
class Env:
    src_dc: rig.Dovecot
    dst_dc: rig.Dovecot
    boxes: list[Mailbox]
    tmp: Path
    cap: int
    parallel: int
    workers: int


@dataclass
class Run:
    tool: str
    wall: float = 0.0
    rss_mb: float = 0.0
    peak: dict[str, int] = field(default_factory=dict)  # "src", "dst", "host" (both at once): SessionCounter.peak
    single: dict[str, int] = field(default_factory=dict)  # SessionCounter.single
    tool_cpu: float = 0.0  # CPU seconds of the tool's processes (all reaped by the time it exits)
    server_cpu: float = 0.0  # CPU seconds of both Dovecots' session and login processes
    identical: int = 0
    code: int = 0
    note: str = ""
    command: str = ""


def children_cpu() -> float:
    """CPU seconds of this process's children (and theirs) that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu(*servers: rig.Dovecot) -> float:
    """CPU seconds of the servers' ended processes: Dovecot's master reaps a session's imap and
    imap-login processes when the session ends (its long-lived auth process is not counted)."""
    total = 0
    for server in servers:
        with open(f"/proc/{server.master_pid()}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def established_at(port: int) -> int:
    """How many ESTABLISHED TCP sockets have `port` as their local port: a server's ends of its
    sessions (a client's ends have it as the remote port), filtered by the kernel (sock_diag)."""
    request = (struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << TCP_ESTABLISHED)
               + struct.pack(">HH", port, 0) + bytes(44))  # inet_diag_req_v2: the sockid's sport, the rest 0
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST_DUMP, 1, 0)
    count = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(header + request, (0, 0))
        while True:
            data, offset = nl.recv(1 << 16), 0
            while offset < len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_DONE:
                    return count
                if kind == NLMSG_ERROR:
                    raise OSError("sock_diag refused the request")
                count += 1
                offset += (length + 3) & ~3


class SessionCounter:
    """Peak of concurrent sessions at each server (established_at its port), sampled every 20 ms.

    No count of the kernel's sockets is atomic: a dump walks the whole connection table (3 ms here,
    /proc/net/tcp 7 ms), so a session handed on from one mailbox to the next during a walk can be
    counted twice. `peak` is therefore the most held through two samples in a row (20 ms; a
    session lasts seconds), `single` the most in one sample (an upper bound, hand-overs included)."""

    def __init__(self, ports: dict[str, int], period: float = 0.02):
        self.ports = ports
        self.period = period
        self.peak: dict[str, int] = {name: 0 for name in [*ports, "host"]}
        self.single = dict(self.peak)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> SessionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        before: dict[str, int] = {}
        while not self._done.wait(self.period):
            now = {name: established_at(port) for name, port in self.ports.items()}
            now["host"] = sum(now.values())
            for name, n in now.items():
                self.single[name] = max(self.single[name], n)
                self.peak[name] = max(self.peak[name], min(n, before.get(name, 0)))
            before = now


# -- the mailboxes ---------------------------------------------------------------------------


def seed_mailboxes(src_dc: rig.Dovecot, n: int, low: int, high: int, seed: int) -> list[Mailbox]:
    """n source users of low..high messages each (a seeded RNG), from one corpus.py corpus of small
    text messages (2-50 KB, nine folders, flags and keywords), seeded four mailboxes at a time by
    pipelined MULTIAPPEND (bench.py's seed_source)."""
    rng = random.Random(seed)
    counts = [rng.randint(low, high) for _ in range(n)]
    mails = corpus_mod.build(sum(counts), mb=0, seed=seed)  # mb=0: no multi-MB attachments
    slices, start = [], 0
    for count in counts:
        slices.append(mails[start:start + count])
        start += count
    del mails

    def one(part: list[corpus_mod.Mail]) -> Mailbox:
        acc = src_dc.new_user("s")
        seed_source(acc, part)
        return Mailbox(acc, corpus_mod.expected(part), len(part))

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, slices))


def check_and_clear(env: Env, dsts: list[rig.Account]) -> int:
    """How many destinations hold exactly their source's mailbox; then their maildirs are removed
    (200 mailboxes are about 0.6 GB a run)."""
    def same(pair: tuple[Mailbox, rig.Account]) -> bool:
        box, dst = pair
        return snapshot(dst) == box.want

    with ThreadPoolExecutor(4) as pool:
        identical = sum(pool.map(same, zip(env.boxes, dsts, strict=True)))
    for dst in dsts:
        shutil.rmtree(Path(env.dst_dc.mail_dir) / dst.user, ignore_errors=True)
    return identical


# -- the rows --------------------------------------------------------------------------------


def migrator_run(env: Env, label: str, *extra: str) -> Run:
    work = Path(tempfile.mkdtemp(prefix="batch-", dir=env.tmp))
    dsts = [env.dst_dc.new_user("d") for _ in env.boxes]
    rows = "".join(f"imap://{b.src.user}@127.0.0.1:{b.src.port},imap://{d.user}@127.0.0.1:{d.port}\n"
                   for b, d in zip(env.boxes, dsts, strict=True))
    (work / "users.csv").write_text("source,destination\n" + rows)
    cmd = [sys.executable, "-m", "migrator", "batch", str(work / "users.csv"), "--parallel", str(env.parallel),
           "--workers", str(env.workers), "--max-connections-per-host", str(env.cap),
           "--state-dir", str(work / "state"), "--report", str(work / "batch.json"), "--quiet",
           "--src-auth-user", env.src_dc.master_user, "--dst-auth-user", env.dst_dc.master_user, *extra]
    # Dovecot's master user on each side: one password per side for every mailbox, as an admin would.
    secrets = {"MIGRATOR_SRC_PASSWORD": env.src_dc.master_password,
               "MIGRATOR_DST_PASSWORD": env.dst_dc.master_password, "PYTHONPATH": str(ROOT)}
    return measured(env, label, cmd, secrets, dsts)


def naive_parallel_run(env: Env) -> Run:
    """imapsync's FAQ: `parallel --colsep ';' -j N imapsync --host1 H1 --user1 {1} ... --user2 {2} ... < users.txt`,
    with the naive client in imapsync's place and the master user on both sides (imapsync's --authuser1/2)."""
    work = Path(tempfile.mkdtemp(prefix="naive-", dir=env.tmp))
    dsts = [env.dst_dc.new_user("d") for _ in env.boxes]
    sep = rig.MASTER_SEPARATOR
    users = work / "users.txt"
    users.write_text("".join(f"{b.src.user}{sep}{env.src_dc.master_user};{d.user}{sep}{env.dst_dc.master_user}\n"
                             for b, d in zip(env.boxes, dsts, strict=True)))
    jobs = max(1, env.cap // 2)  # each job holds one connection per side: the same cap per host as migrator's
    cmd = ["parallel", "--colsep", ";", "-j", str(jobs), sys.executable, str(ROOT / "benchmarks" / "clients.py"),
           "naive", str(env.src_dc.port), str(env.dst_dc.port), "{1}", "{2}"]
    secrets = {"BENCH_SRC_PASSWORD": env.src_dc.master_password, "BENCH_DST_PASSWORD": env.dst_dc.master_password}
    return measured(env, f"naive x parallel -j {jobs}", cmd, secrets, dsts, stdin=users)


def measured(env: Env, label: str, cmd: list[str], secrets: dict, dsts: list[rig.Account],
             stdin: Path | None = None) -> Run:
    tool_cpu, servers_cpu = children_cpu(), server_cpu(env.src_dc, env.dst_dc)
    with SessionCounter({"src": env.src_dc.port, "dst": env.dst_dc.port}) as sessions:
        wall, rss, code, out = run_measured(cmd, secrets, cwd=str(ROOT), stdin=stdin, at_once=True)
    time.sleep(0.5)  # the servers' last sessions end and are reaped
    run = Run(label, wall, rss, dict(sessions.peak), dict(sessions.single), children_cpu() - tool_cpu,
              server_cpu(env.src_dc, env.dst_dc) - servers_cpu, code=code,
              command=shlex.join(cmd) + (f" < {stdin.name}" if stdin else ""))
    run.identical = check_and_clear(env, dsts)
    if code != 0:
        run.note = f"exit {code}: {' '.join(out.strip().splitlines()[-1:])[:160]}"
    return run


ROWS = {
    "pool": lambda e: migrator_run(e, "migrator batch"),
    "cluster": lambda e: migrator_run(e, "migrator batch --cluster local", "--cluster", "local"),
    "naive": naive_parallel_run,
}


# -- the report ------------------------------------------------------------------------------


def median(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.wall)[(len(runs) - 1) // 2]


def table(runs_of: dict[str, list[Run]], boxes: int, messages: int) -> str:
    head = ["tool", "wall s", "mailboxes/min", "msgs/s", "peak sessions src/dst/host", "peak RSS MB",
            "CPU s tool/servers", "identical; runs"]
    lines = [head]
    for runs in runs_of.values():
        r = median(runs)
        walls = "/".join(f"{x.wall:.1f}" for x in sorted(runs, key=lambda x: x.wall))
        ident = f"{r.identical}/{boxes}" + (f" ({r.note})" if r.note else "")
        ident += f"; {walls} s" if len(runs) > 1 else ""
        lines.append([r.tool, f"{r.wall:.1f}", f"{60 * boxes / r.wall:.0f}", f"{messages / r.wall:.0f}",
                      f"{r.peak['src']}/{r.peak['dst']}/{r.peak['host']}", f"{r.rss_mb:.0f}",
                      f"{r.tool_cpu:.1f}/{r.server_cpu:.1f}", ident])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def ratios(runs_of: dict[str, list[Run]]) -> str:
    """Each migrator row against the naive row, round by round (the runs of one round are minutes
    apart, so their ratio is steadier than a ratio of medians on a noisy machine): its speed, and
    how much less CPU its own processes used."""
    if "naive" not in runs_of:
        return ""
    lines = []
    for name, runs in runs_of.items():
        if name == "naive":
            continue
        pairs = list(zip(runs, runs_of["naive"], strict=True))
        measures = (("speed", lambda m, n: n.wall / m.wall), ("CPU of its own processes (less)",
                                                               lambda m, n: n.tool_cpu / m.tool_cpu))
        for what, ratio in measures:
            per_round = sorted(ratio(m, n) for m, n in pairs)
            lines.append(f"{runs[0].tool} / {runs_of['naive'][0].tool}, {what} per round: median "
                         f"{per_round[(len(per_round) - 1) // 2]:.2f}x (range {per_round[0]:.2f}-{per_round[-1]:.2f}, "
                         f"{len(per_round)} rounds: " + ", ".join(f"{x:.2f}" for x in per_round) + ")")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mailboxes", type=int, default=200)
    ap.add_argument("--min-messages", type=int, default=50)
    ap.add_argument("--max-messages", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="N interleaved rounds; each row shows its median run")
    ap.add_argument("--cap", type=int, default=10,
                    help="connections per host (both servers are on 127.0.0.1): migrator's "
                         "--max-connections-per-host, and CAP/2 parallel jobs of the naive client")
    ap.add_argument("--parallel", type=int, help="migrator batch --parallel (default: CAP / 2, each mailbox "
                                                 "holding a connection on each side)")
    ap.add_argument("--workers", type=int, default=1, help="migrator batch --workers (per mailbox)")
    ap.add_argument("--tools", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if unknown := [t for t in tools if t not in ROWS]:
        ap.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if "naive" in tools and not shutil.which("parallel"):
        ap.error("GNU parallel is not installed (apt-get install -y parallel)")
    compileall.compile_dir(str(ROOT / "migrator"), quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="mgbb-", dir="/tmp"))
    src_dc = rig.Dovecot(tmp, "src", separator="/", special_use=True, compress=False)
    dst_dc = rig.Dovecot(tmp, "dst", separator="/", special_use=True, compress=False)
    try:
        src_dc.start()
        dst_dc.start()
        t = time.monotonic()
        boxes = seed_mailboxes(src_dc, args.mailboxes, args.min_messages, args.max_messages, args.seed)
        messages = sum(b.messages for b in boxes)
        print(f"{len(boxes)} mailboxes, {messages} messages, seed {args.seed}; built and seeded in "
              f"{time.monotonic() - t:.0f} s", flush=True)
        args.parallel = args.parallel or max(1, args.cap // 2)
        env = Env(src_dc, dst_dc, boxes, tmp, args.cap, args.parallel, args.workers)
        runs_of: dict[str, list[Run]] = {name: [] for name in tools}
        for r in range(args.repeat):  # interleaved rounds, each starting one row later (see bench.py)
            for name in tools[r % len(tools):] + tools[:r % len(tools)]:
                run = ROWS[name](env)
                runs_of[name].append(run)
                print(f"  round {r + 1}: {run.tool}: {run.wall:.1f} s, sessions {run.peak} "
                      f"(in one sample {run.single}), "
                      f"RSS {run.rss_mb:.0f} MB, identical {run.identical}/{len(boxes)} {run.note}", flush=True)
        print(f"\n{len(boxes)} mailboxes, {messages} messages, cap {args.cap} connections per host, "
              f"migrator --parallel {args.parallel} --workers {args.workers}\n")
        print(table(runs_of, len(boxes), messages))
        print("\nCommands (the last round's):\n" + "\n".join(f"  {runs[-1].command}" for runs in runs_of.values()))
        print("\n" + ratios(runs_of))
        return 0
    finally:
        src_dc.cleanup()
        dst_dc.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
