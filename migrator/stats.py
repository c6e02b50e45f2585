"""Counting, kept apart from drawing (rclone's accounting idea).

Workers add to a Stats object under a lock; progress.py and report.py only read.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migrator.naming import Folder, display

if TYPE_CHECKING:
    from migrator.governor import Wait


@dataclass
class Failure:
    folder: str
    uid: int | None
    reason: str


@dataclass
class FolderCounts:
    planned: int = 0  # messages to copy, as known after the march
    planned_bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    copied_within: int = 0  # of copied: copied within the destination (COPY), not downloaded again
    already: int = 0  # recorded as copied by an earlier run
    found: int = 0  # already on the destination, adopted without copying (reconciliation)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    failed: int = 0
    flags_updated: int = 0
    deleted_extra: int = 0
    created: bool = False


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.finished: float | None = None
        self.folders: dict[str, FolderCounts] = {}
        self.failures: list[Failure] = []
        self.warnings: list[str] = []
        self.folder_errors: list[Failure] = []
        self.waits: list = []  # governor.Wait: each pause a server asked for
        self._waiting_until = 0.0  # monotonic end of the latest pause (the progress line says it)
        self._waiting_why: Wait | None = None
        self.interrupted = False
        # A destination that keeps snapshots: folders the source no longer has -> their messages,
        # out of the latest snapshot (engine/prepare.py)
        self.folders_gone: dict[str, int] = {}

    def _f(self, folder: Folder) -> FolderCounts:
        return self.folders.setdefault(display(folder), FolderCounts())

    def add(self, folder: Folder, **counts: int) -> None:
        with self._lock:
            fc = self._f(folder)
            for key, value in counts.items():
                setattr(fc, key, getattr(fc, key) + value)

    def mark_created(self, folder: Folder) -> None:
        with self._lock:
            self._f(folder).created = True

    def skip(self, folder: Folder, reason: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._f(folder).skipped[reason] += n

    def fail(self, folder: Folder, uid: int | None, reason: str) -> None:
        with self._lock:
            self._f(folder).failed += 1
            self.failures.append(Failure(display(folder), uid, reason))

    def folder_failed(self, folder: Folder, reason: str) -> None:
        with self._lock:
            self._f(folder)
            self.folder_errors.append(Failure(display(folder), None, reason))

    def folder_gone(self, folder: Folder, messages: int) -> None:
        with self._lock:
            self.folders_gone[display(folder)] = messages

    def warn(self, text: str) -> None:
        with self._lock:
            if text not in self.warnings:
                self.warnings.append(text)

    def waited(self, wait) -> None:
        with self._lock:
            self.waits.append(wait)
            self._waiting_until = max(self._waiting_until, time.monotonic() + wait.seconds)
            self._waiting_why = wait

    def waiting(self) -> tuple[float, Wait] | None:
        """(seconds left, the governor.Wait) while a pause a server asked for lasts; else None."""
        with self._lock:
            left = self._waiting_until - time.monotonic()
            return (left, self._waiting_why) if left > 0 and self._waiting_why is not None else None

    # -- read side -------------------------------------------------------------------------

    def snapshot(self, folder: Folder) -> tuple[int, int, int, int]:
        """A folder's (copied, flags updated, deleted extra, failed) now: follow mode tells the
        changes one march made by the difference."""
        with self._lock:
            fc = self.folders.get(display(folder)) or FolderCounts()
            return fc.copied, fc.flags_updated, fc.deleted_extra, fc.failed

    def total(self, key: str) -> int:
        with self._lock:
            return sum(getattr(fc, key) for fc in self.folders.values())

    def total_skipped(self) -> Counter:
        with self._lock:
            out: Counter = Counter()
            for fc in self.folders.values():
                out.update(fc.skipped)
            return out

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def finish(self) -> None:
        self.finished = time.monotonic()

    @property
    def ok(self) -> bool:
        return not self.failures and not self.folder_errors and not self.interrupted
