"""Archive size and speed (issue 18): one corpus backed up to an archive, the archive's size against
`xz -6` and `zstd -19` of the same messages as one mbox, and backup, no-op rerun and restore rates.

    python benchmarks/archive.py                       # the shared corpus (MIGRATOR_CORPUS or ../shared/corpus)
    python benchmarks/archive.py --bench-corpus        # the seeded 5,000-message corpus of bench.py (250 MB)
    python benchmarks/archive.py --encrypt             # the same, the archive encrypted with age (pyrage)

No server: the source and the restore's destination are migrator's in-memory store, so the rates
are the archive's own (compression, dedup, index, checks) plus the engine, not a server's. Timed
in-process with the engine's default options (4 workers). xz and zstd run as the stock tools, one
thread each (-T1), on the mbox written to a temporary file; their times are wall times too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrator.accounts import parse_endpoint  # noqa: E402
from migrator.checkpoint import Checkpoint  # noqa: E402
from migrator.engine.copy import Engine, EngineOptions  # noqa: E402
from migrator.imapdate import format_date  # noqa: E402
from migrator.plan import FolderPlan, Plan  # noqa: E402
from migrator.stats import Stats  # noqa: E402
from migrator.stores.archive import ArchiveStore  # noqa: E402
from migrator.stores.memory import MemoryServer  # noqa: E402


def shared_corpus() -> MemoryServer:
    root = Path(os.environ.get("MIGRATOR_CORPUS") or Path(__file__).resolve().parents[2] / "shared" / "corpus")
    src = MemoryServer()
    for path in sorted(root.glob("*/*.eml")):
        src.deliver((path.parent.name,), path.read_bytes(), ("\\Seen",), "14-Mar-2019 15:09:26 +0200")
    return src


def bench_corpus(messages: int, mb: float) -> MemoryServer:
    from benchmarks.corpus import build
    src = MemoryServer()
    for mail in build(messages, mb):
        src.deliver(mail.folder, mail.body, mail.flags, format_date(mail.date))
    return src


def _copy(src_connect, dst_connect, src_url: str, dst_url: str, folders, state: Path) -> tuple[float, Stats]:
    plan = Plan(parse_endpoint(src_url), parse_endpoint(dst_url), [FolderPlan(f, f) for f in folders])
    ckpt = Checkpoint(str(state))
    try:
        ckpt.bind(src_url, dst_url)
        started = time.perf_counter()
        stats = Engine(plan, src_connect, dst_connect, ckpt, EngineOptions(), Stats()).run()
        return time.perf_counter() - started, stats
    finally:
        ckpt.close()


def _contents(connect, folders) -> dict:
    st, out = connect(), {}
    try:
        for f in folders:
            st.select(f)
            out[f] = Counter(m.body for m in st.fetch([m.uid for m in st.list_messages()]))
    finally:
        st.close()
    return out


def _tool(cmd: list[str], mbox: Path) -> tuple[int, float]:
    started = time.perf_counter()
    out = subprocess.run([*cmd, "-c", str(mbox)], capture_output=True, check=True).stdout
    return len(out), time.perf_counter() - started


def _identity(tmp: str) -> tuple[tuple[str, ...], str | None]:
    """A fresh age identity in a file, and its recipient (--encrypt)."""
    from pyrage import x25519
    key = x25519.Identity.generate()
    path = Path(tmp) / "identity.txt"
    path.write_text(str(key) + "\n")
    path.chmod(0o600)
    return (str(key.to_public()),), str(path)


def run(src: MemoryServer, name: str, encrypt: bool = False) -> None:
    folders = src.names()
    bodies = [b for f in folders for b in _contents(src.connect, [f])[f].elements()]
    raw = sum(map(len, bodies))
    with tempfile.TemporaryDirectory() as tmp:
        mbox = Path(tmp) / "all.mbox"
        with open(mbox, "wb") as fh:  # mboxo-style: only the sizes matter here
            for body in bodies:
                fh.write(b"From MAILER-DAEMON Thu Mar 14 13:09:26 2019\n" + body + b"\n")
        xz, xz_s = _tool(["xz", "-6", "-T1"], mbox)
        zst, zst_s = _tool(["zstd", "-19", "-T1", "-q"], mbox)
        archive = Path(tmp) / "archive"
        url = f"archive://{archive}"
        recipients, identity = _identity(tmp) if encrypt else ((), None)
        backup_s, stats = _copy(src.connect, lambda: ArchiveStore(str(archive), encrypt_to=recipients), "imap://a@src",
                                url, folders, Path(tmp) / "b.sqlite")
        assert stats.ok, "the backup failed"
        noop_s, _ = _copy(src.connect, lambda: ArchiveStore(str(archive)), "imap://a@src", url, folders,
                          Path(tmp) / "b.sqlite")
        size = sum(p.stat().st_size for p in archive.rglob("*") if p.is_file())
        data = sum(p.stat().st_size for p in (archive / "data").iterdir())
        dst = MemoryServer()
        restore_s, stats = _copy(lambda: ArchiveStore(str(archive), create=False, readonly=True, identity=identity),
                                 dst.connect, url,
                                 "imap://b@dst", folders, Path(tmp) / "r.sqlite")
        identical = stats.ok and _contents(dst.connect, folders) == _contents(src.connect, folders)
        shutil.rmtree(archive)
    n, mb = len(bodies), raw / 1e6
    what = name + (", encrypted (age, one recipient)" if encrypt else "")
    print(f"{what}: {n} messages, {mb:.1f} MB, {len(folders)} folders, {os.cpu_count()} CPUs\n")
    print("| what | size MB | vs xz -6 | time s | rate |")
    print("|---|---|---|---|---|")
    print(f"| xz -6 -T1 (one mbox) | {xz / 1e6:.2f} | 1.000 | {xz_s:.2f} | {mb / xz_s:.1f} MB/s |")
    print(f"| zstd -19 -T1 (one mbox) | {zst / 1e6:.2f} | {zst / xz:.3f} | {zst_s:.2f} | {mb / zst_s:.1f} MB/s |")
    print(f"| migrator backup (archive dir, index included) | {size / 1e6:.2f} | {size / xz:.3f} | {backup_s:.2f} | "
          f"{n / backup_s:.0f} msgs/s, {mb / backup_s:.1f} MB/s; {xz_s / backup_s:.1f}x xz's speed |")
    print(f"| (its data files alone) | {data / 1e6:.2f} | {data / xz:.3f} | - | - |")
    print(f"| migrator no-op rerun | - | - | {noop_s:.2f} | {n / noop_s:.0f} msgs/s |")
    print(f"| migrator restore (identical: {'yes' if identical else 'NO'}) | - | - | {restore_s:.2f} | "
          f"{n / restore_s:.0f} msgs/s, {mb / restore_s:.1f} MB/s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-corpus", action="store_true", help="the seeded corpus of bench.py instead")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--mb", type=float, default=250)
    ap.add_argument("--encrypt", action="store_true", help="the archive encrypted with age (needs pyrage)")
    args = ap.parse_args()
    if args.bench_corpus:
        run(bench_corpus(args.messages, args.mb), f"bench corpus (seed 1, {args.messages} messages)", args.encrypt)
    else:
        run(shared_corpus(), "shared corpus", args.encrypt)


if __name__ == "__main__":
    main()
