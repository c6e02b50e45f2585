"""Files migrator creates hold mail metadata: owner-only permissions (0600 files, 0700 dirs).

Its state file and an archive are written by one process at a time: lock_exclusive(); an archive's
readers hold lock_shared() on another file."""

from __future__ import annotations

import fcntl
import json
import os
from typing import IO, Any

from migrator.errors import StateError


def ensure_private_dir(path: str) -> None:
    """Create PATH and any missing parents with mode 0700 (existing directories are left alone).

    os.makedirs(mode=...) applies the mode to the last level only (Python >= 3.7),
    so the missing levels are created one by one here.
    """
    if not path or os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if parent != os.path.abspath(path):
        ensure_private_dir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def write_private(path: str, data: str | bytes) -> None:
    """Write a file atomically (temp + rename) with mode 0600."""
    ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    write_private(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def lock_exclusive(path: str, busy: str, hint: str | None = None) -> IO[bytes]:
    """Hold an exclusive lock (flock) on the lock file PATH, created 0600, until the returned file
    is closed, or the process ends. Held by another process: StateError(busy, hint) at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fh = os.fdopen(fd, "r+b", buffering=0)
    try:
        os.fchmod(fd, 0o600)  # one an older migrator created with the umask's mode
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StateError(busy, hint=hint) from None
    except BaseException:
        fh.close()
        raise
    return fh


def lock_shared(path: str) -> IO[bytes]:
    """Hold a shared lock (flock) on the lock file PATH, created 0600, until the returned file is
    closed: many holders at once; lock_exclusive() on the same file fails while any holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fh = os.fdopen(fd, "r+b", buffering=0)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for an exclusive holder, who never holds it long
    except BaseException:
        fh.close()
        raise
    return fh
