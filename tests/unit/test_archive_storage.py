"""An archive's storage failing under a backup (issue 18): a full disk (a small tmpfs), a read-only
file system, a torn last frame after kill -9, and two backups creating one archive at once.
The backup is the CLI from one archive to another (a source archive on the ordinary disk), the
state file beside the destination archive as examples/backup-cron.sh keeps it. tmpfs needs root
(the tests run as root); without it these are skipped with the reason."""

from __future__ import annotations

import base64
import fcntl
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator.stores.archive import ArchiveStore
from migrator.stores.base import AppendItem
from tests.helpers import migrator, simple_message
from tests.unit.archive_helpers import archive_contents

DATE = "14-Mar-2019 15:09:26 +0200"
FOLDERS = [("INBOX",), ("A",), ("B",), ("C",)]


def _source(path: Path, per_folder: int = 12, size: int = 6000) -> Path:
    """An archive of messages that do not compress much (base64 of random bytes), several folders."""
    rnd = random.Random(18)
    arc = ArchiveStore(str(path))
    try:
        n = 0
        for folder in FOLDERS:
            arc.create_folder(folder)
            items = []
            for _ in range(per_folder):
                n += 1
                text = base64.encodebytes(rnd.randbytes(size)).decode().replace("\n", "\r\n")
                items.append(AppendItem(simple_message(n, body=text), ("\\Seen",), DATE))
            arc.append(folder, items)
    finally:
        arc.close()
    return path


def _zstd_t(archive: Path) -> subprocess.CompletedProcess:
    files = sorted(str(p) for p in (archive / "data").iterdir())
    if not files:  # the disk filled before any frame was committed (grouped frames are big writes)
        return subprocess.CompletedProcess(["zstd", "-t"], 0, "", "")
    return subprocess.run(["zstd", "-q", "-t", *files], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point with a 512 kB tmpfs on it; the test may remount it (size, ro)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def _backup(src: Path, mnt: Path):
    return migrator("migrate", f"archive://{src}", f"archive://{mnt}/backup.archive", "--quiet",
                    "--state", f"{mnt}/backup.state.sqlite", "--report", f"{mnt}/last-report.json")


def _one_line(res, *words: str) -> None:
    assert res.code == 1, res.text
    assert "Traceback" not in res.text and "rollback" not in res.text and "internal error" not in res.text, res.text
    assert res.out == "" and res.err.count("\n") == 1 and res.err.startswith("migrator: error: "), res.text
    assert any(w in res.err for w in words), res.err


def test_a_full_disk_stops_the_backup_with_one_line_and_a_rerun_after_freeing_space_is_identical(tmp_path, tmpfs):
    src = _source(tmp_path / "src.archive", per_folder=30)  # 1 MB of mail, 0.8 MB compressed
    started = time.monotonic()
    res = _backup(src, tmpfs)
    _one_line(res, "No space left on device", "database or disk is full")
    assert time.monotonic() - started < 20  # stopped at once, not every folder retried with backoff
    dst = tmpfs / "backup.archive"
    _remount(tmpfs, "size=8m")
    assert migrator("archive", "check", str(dst)).code == 0  # consistent: every row's bytes are there
    assert _zstd_t(dst).returncode == 0
    res = _backup(src, tmpfs)
    assert res.code == 0, res.text
    assert archive_contents(dst) == archive_contents(src)
    assert migrator("verify", f"archive://{src}", f"archive://{dst}").code == 0


def test_a_read_only_file_system_is_one_line_and_the_rerun_after_is_identical(tmp_path, tmpfs):
    src = _source(tmp_path / "src.archive", per_folder=2, size=100)
    _remount(tmpfs, "size=8m")
    assert _backup(src, tmpfs).code == 0
    arc = ArchiveStore(str(src))
    try:
        arc.append(("A",), [AppendItem(simple_message(99), (), DATE)])
    finally:
        arc.close()
    _remount(tmpfs, "ro")
    _one_line(_backup(src, tmpfs), "Read-only file system")
    _remount(tmpfs, "rw")
    res = _backup(src, tmpfs)
    assert res.code == 0, res.text
    assert archive_contents(tmpfs / "backup.archive") == archive_contents(src)


def test_a_torn_last_frame_is_cut_off_on_the_next_open_so_zstd_t_passes(tmp_path):
    """What kill -9 in the middle of a write leaves: part of a frame after the last committed one
    (and a new data file holding only such a part). The next open cuts them off: no index row
    points at them. Simulated by writing those bytes: a real kill cannot be aimed inside a write."""
    archive = _source(tmp_path / "a", per_folder=3, size=200)
    before = archive_contents(archive)
    data = archive / "data"
    first = sorted(data.iterdir())[0]
    frame = first.read_bytes()
    with open(first, "ab") as fh:
        fh.write(frame[: len(frame) // 5])  # a frame's first part
    (data / "9-999-torn-1.zst").write_bytes(frame[:40])
    assert _zstd_t(archive).returncode != 0  # as `zstd -t` found it in issue 18
    ArchiveStore(str(archive), create=False, readonly=True).close()
    assert _zstd_t(archive).returncode == 0, _zstd_t(archive).stderr
    assert first.read_bytes() == frame and not (data / "9-999-torn-1.zst").exists()
    assert archive_contents(archive) == before


def test_an_archive_being_created_is_in_use_not_a_foreign_directory(tmp_path):
    """Another process holds the lock of a new archive it has not finished creating."""
    new = tmp_path / "new.archive"
    new.mkdir()
    with open(new / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = migrator("migrate", f"archive://{_source(tmp_path / 's', 1, 10)}", f"archive://{new}",
                       "--state", str(tmp_path / "st.sqlite"))
    assert res.code == 2 and "is in use by another migrator process" in res.err, res.text
    assert "not empty" not in res.text


def test_two_backups_started_at_the_same_instant_on_a_new_directory_one_runs_one_is_refused(tmp_path):
    """Each from its own source (an archive being read is locked too): the race is the new one's."""
    sources = [_source(tmp_path / "s0", per_folder=30, size=3000)]
    sources.append(Path(shutil.copytree(sources[0], tmp_path / "s1")))
    # Started, migrator imported, then both told to go at once (a line on their stdin).
    go = ("import sys; from migrator.cli import main; print('ready', flush=True); sys.stdin.readline(); "
          "main(sys.argv[1:])")
    overlapped = 0
    for round_ in range(5):  # on a loaded machine one may finish before the other gets the CPU
        new = tmp_path / f"new{round_}"
        procs = [subprocess.Popen(
            [sys.executable, "-c", go, "migrate", f"archive://{src}", f"archive://{new}", "--quiet",
             "--state", str(tmp_path / f"st{round_}-{i}.sqlite")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, src in enumerate(sources)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [(p.wait(60), p.communicate()[1]) for p in procs]
        assert "not empty" not in str(results) and "Traceback" not in str(results), results
        codes = sorted(code for code, _err in results)
        assert codes in ([0, 2], [0, 0]), results  # [0, 0]: one ran after the other, an incremental rerun
        if codes == [0, 2]:
            refusal = next(err for code, err in results if code == 2)
            assert f"archive {new} is in use by another migrator process" in refusal, refusal
            overlapped += 1
        assert archive_contents(new) == archive_contents(sources[0])
        if overlapped == 2:
            break
    assert overlapped, "the two backups never ran at the same time"
