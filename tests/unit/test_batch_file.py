"""The example batch file parses (it documents the format)."""

from pathlib import Path

from migrator.batch import read_batch


def test_example_batch_csv_parses():
    rows = read_batch(str(Path(__file__).resolve().parents[2] / "examples" / "batch.csv"))
    assert [r.line for r in rows] == [5, 6, 7]
    assert rows[1].src_password_file == "/etc/migrator/bob.src"
    assert rows[2].destination.startswith("archive://")
