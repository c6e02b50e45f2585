"""Batches: many mailboxes from one CSV file, each an ordinary migrate with its own checkpoint.

CSV columns (header required; '#' lines are comments):
    source, destination                      required: account URLs (or archive:// URLs)
    src_password_file, dst_password_file     optional: per-mailbox password files (mode 0600)
    src_auth_user, dst_auth_user             optional: admin / master user for that row
Rows without password files use MIGRATOR_SRC_PASSWORD / MIGRATOR_DST_PASSWORD,
which with an admin user (--src-auth-user) is the admin's password: the usual
way to move a whole domain without knowing users' passwords.

A failure in one mailbox is recorded and the batch goes on with the next; the
batch's exit code is the worst of its mailboxes'. Running them: batchrun.py (where), the batch
journal (batch_journal.py: which, on a rerun), cli/batch_task.py (one mailbox).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

from migrator.accounts import parse_endpoint
from migrator.errors import EXIT_INTERRUPTED, UsageError

REQUIRED = ("source", "destination")
OPTIONAL = ("src_password_file", "dst_password_file", "src_auth_user", "dst_auth_user")


@dataclass(frozen=True)
class BatchRow:
    line: int
    source: str
    destination: str
    src_password_file: str | None = None
    dst_password_file: str | None = None
    src_auth_user: str | None = None
    dst_auth_user: str | None = None


def read_batch(path: str) -> list[BatchRow]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = [(n, line) for n, line in enumerate(fh, start=1)
                     if line.strip() and not line.lstrip().startswith("#")]
    except OSError as e:
        raise UsageError(f"cannot read batch file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None
    if not lines:
        raise UsageError(f"{path}: no header and no rows")
    reader = csv.reader(line for _n, line in lines)
    header = [h.strip() for h in next(reader)]
    unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
    if unknown:
        raise UsageError(f"{path}:{lines[0][0]}: unknown column '{unknown[0]}'",
                         hint="columns: " + ", ".join(REQUIRED + OPTIONAL))
    missing = [h for h in REQUIRED if h not in header]
    if missing:
        raise UsageError(f"{path}:{lines[0][0]}: the header has no '{missing[0]}' column")
    rows: list[BatchRow] = []
    # strict=False: a quoted value over two lines makes one row of two lines (numbered as before).
    for (number, _text), values in zip(lines[1:], reader, strict=False):
        if len(values) > len(header):
            raise UsageError(f"{path}:{number}: {len(values)} values for {len(header)} columns")
        # strict=False: a row may leave its last (optional) columns out.
        cells = {h: (v.strip() or None) for h, v in zip(header, values, strict=False)}
        urls = []
        for key in REQUIRED:
            url = cells.get(key)
            if not url:
                raise UsageError(f"{path}:{number}: '{key}' is empty")
            try:
                parse_endpoint(url)
            except UsageError as e:
                raise UsageError(f"{path}:{number}: {e}", hint=e.hint) from None
            urls.append(url)
        source, destination = urls
        rows.append(BatchRow(number, source, destination, **{k: cells.get(k) for k in OPTIONAL}))
    if not rows:
        raise UsageError(f"{path}: no mailboxes listed")
    return rows


def batch_exit_code(codes: list[int]) -> int:
    """The worst of the mailboxes' exit codes; an interrupted one makes the batch interrupted."""
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return max(codes, default=0)


def state_path_for(state_dir: str, default_path: str) -> str:
    return os.path.join(state_dir, os.path.basename(default_path))
