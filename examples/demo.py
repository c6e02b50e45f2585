"""The demo: two throwaway local Dovecot servers, sample mail, migrate, verify, report.

Run from the repository root (as root: Dovecot's mail processes need a system
user): `bash examples/demo.sh`, which installs what is missing and calls this.

1. starts a source server ('/' separator) and a destination server ('.'
   separator with the Courier-style "INBOX." prefix) on 127.0.0.1;
2. seeds the source with real-world messages from ../shared/corpus (or a
   generated set if the corpus is not there) in nested folders, with flags,
   keywords and dates;
3. runs `migrator migrate`, then `migrator verify`, then `migrate` again
   (copies nothing), and prints the JSON report's totals;
4. archives the new mailbox into a zstd archive (a backup), verifies the
   archive against the server, and restores it into a fresh account.
Everything is removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import rig  # noqa: E402  (the same Dovecot harness the tests use)


def sample_messages() -> list[tuple[str, bytes]]:
    try:
        corpus = rig.corpus_messages()
    except FileNotFoundError:
        corpus = []
    if corpus:
        return corpus[:300]
    return [
        (f"generated/{i}", f"From: a@example.com\r\nSubject: sample {i}\r\nMessage-ID: <{i}@demo>\r\n\r\nbody {i}\r\n".encode())
        for i in range(200)
    ]


def run(step: str, *args: str, env: dict) -> int:
    print(f"\n$ migrator {' '.join(args)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "migrator", *args], env=env)
    print(f"[{step}: exit {code}]", flush=True)
    return code


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mgr-demo-", dir="/tmp"))
    os.chmod(work, 0o755)
    src_server = rig.Dovecot(work, "old-server", separator="/", prefix="", special_use=True)
    dst_server = rig.Dovecot(work, "new-server", separator=".", prefix="INBOX.", special_use=False)
    try:
        src_server.start()
        dst_server.start()
        src, dst = src_server.new_user("alice"), dst_server.new_user("alice")
        msgs = sample_messages()
        flags = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Forwarded"), ("\\Seen", "NonJunk")]
        folders: dict[tuple, list] = {}
        base = datetime(2021, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
        for i, (path, raw) in enumerate(msgs):
            folder = ("INBOX",) if i % 4 == 0 else ("Projects", path.split("/")[0]) if i % 4 == 1 else ("Archive", "2021")
            folders.setdefault(folder, []).append((raw, flags[i % len(flags)], base + timedelta(hours=i)))
        for folder, items in folders.items():
            rig.seed(src, list(folder), items)
        rig.create_folder(src, ["Sent"])  # an empty special-use folder
        print(f"source      {src.url}: {len(msgs)} messages in {len(folders) + 1} folders")
        print(f"destination {dst.url} (separator '.', prefix 'INBOX.')")

        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
        env.update(src.env("src"))
        env.update(dst.env("dst"))
        state, report = str(work / "demo.state.sqlite"), str(work / "report.json")
        codes = [
            run("migrate", "migrate", src.url, dst.url, "--state", state, "--report", report, env=env),
            run("verify", "verify", src.url, dst.url, env=env),
            run("rerun", "migrate", src.url, dst.url, "--state", state, "--quiet", env=env),
        ]
        archive = f"archive://{work / 'alice.archive'}"
        restored = src_server.new_user("restored")
        env.update(restored.env("dst"))  # restore target; the archive needs no password
        env_backup = dict(env, MIGRATOR_SRC_PASSWORD=dst.password)
        codes += [
            run("backup", "migrate", dst.url, archive, "--state", str(work / "backup.sqlite"), "--quiet", env=env_backup),
            run("verify archive", "verify", dst.url, archive, env=env_backup),
            run("restore", "migrate", archive, restored.url, "--state", str(work / "restore.sqlite"), "--quiet", env=env),
            run("verify restore", "verify", src.url, restored.url, env=dict(env, MIGRATOR_DST_PASSWORD=restored.password)),
        ]
        size = sum(f.stat().st_size for f in (work / "alice.archive" / "data").iterdir())
        print(f"\narchive: {size / 1e6:.1f} MB of zstd frames")
        totals = json.loads(Path(report).read_text())["totals"]
        print("\nreport totals:", json.dumps({k: totals[k] for k in ("copied", "copied_bytes", "failed", "skipped", "messages_per_second")}))
        print("\ndestination folders:", ", ".join(sorted(n for _f, _d, n in rig.connect(dst).list_folders())))
        # The first run exits 1 only if the destination server altered a message (reported above).
        ok = all(code == 0 for code in codes[1:])
        print("\nDEMO OK: destination verified identical" if ok else "\nDEMO FAILED")
        return 0 if ok else 1
    finally:
        src_server.cleanup()
        dst_server.cleanup()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
