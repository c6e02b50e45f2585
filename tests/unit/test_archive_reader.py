"""The reader docs/archive-format.md shows (only sqlite3 and zstandard) is run exactly as the
document has it, on a backup, in a fresh interpreter: what it lists and writes matches the
source by SHA-256, and it names a damaged message. If the format changes and the document does
not, this fails."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from migrator.stores.memory import MemoryServer
from tests.helpers import simple_message
from tests.unit.archive_helpers import backup, flip_bit

DOC = Path(__file__).resolve().parents[2] / "docs" / "archive-format.md"


def reader_code() -> str:
    match = re.search(r"<!-- reader -->\n```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match, "docs/archive-format.md has no reader block"
    return match.group(1)


def test_the_documented_reader_is_about_30_lines_and_uses_only_sqlite3_and_zstandard():
    code = reader_code()
    imported = set(re.findall(r"^import (.+)$", code, re.MULTILINE))
    assert {m.strip() for line in imported for m in line.split(",")} <= {
        "hashlib", "json", "os", "sqlite3", "sys", "zstandard"}
    assert len(code.splitlines()) <= 35


def test_the_documented_reader_lists_and_extracts_every_message_and_names_a_damaged_one(tmp_path):
    src, bodies = MemoryServer(), {}
    for n in range(1, 13):
        folder = ("INBOX",) if n % 3 else ("Archive", "2020")
        body = simple_message(n, body=f"message {n}\r\n" * (n * 50)) + (b"\0nul\r\n" if n == 5 else b"")
        uid = src.deliver(folder, body, ("\\Seen",) if n % 2 else ())
        bodies[(folder, uid)] = body
    assert backup(src, tmp_path / "a", tmp_path / "s.sqlite").ok
    script = tmp_path / "reader.py"
    script.write_text(reader_code())

    def run(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "a"), str(out)],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    res = run(tmp_path / "out")
    assert res.returncode == 0, res.stderr
    listed = [line.split("\t") for line in res.stdout.splitlines()]
    assert len(listed) == len(bodies)
    for (folder, uid), body in bodies.items():
        written = (tmp_path / "out").joinpath(*folder, f"{uid}.eml").read_bytes()
        assert hashlib.sha256(written).digest() == hashlib.sha256(body).digest()
    assert ["INBOX", "1", str(len(bodies[(("INBOX",), 1)])), "\\Seen"] == listed[
        [row[0] for row in listed].index("INBOX")][:4]

    flip_bit(tmp_path / "a", ("INBOX",), 3)
    res = run(tmp_path / "out2")
    assert res.returncode == 1 and "DAMAGED INBOX UID 3" in res.stdout, res.stdout + res.stderr
    assert not (tmp_path / "out2" / "INBOX" / "3.eml").exists()
