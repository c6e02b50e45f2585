"""The copy engine: one engine for every pair of stores. docs/engine.md draws the whole of it.

Engine is the public face (runner.py, the tests): it puts the parts of a run together.
  - engine/prepare.py: destination folders created, STATUS taken, unchanged folders skipped;
  - engine/scheduler.py: the job queue, the workers, the stop, retries with backoff;
  - engine/sync.py: one folder's march, chunks and end (a FolderRun's phases, jobs.Phase), with
    matching.py (what the destination already holds), copying.py (the copy, journalled),
    ending.py (size check, read-back, watermark, the end deferred to the next SELECT) and
    readback.py (content checks);
  - engine/context.py: what they share, and the Ledger that records each message's outcome;
  - engine/follow.py: --follow, the source watched after the first pass, changes marched again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from migrator.checkpoint import Checkpoint
from migrator.engine.context import Context
from migrator.engine.follow import Follower
from migrator.engine.jobs import EngineOptions, MarchJob
from migrator.engine.prepare import Preparation
from migrator.engine.scheduler import Scheduler
from migrator.engine.sync import FolderSync
from migrator.naming import Folder
from migrator.plan import Plan
from migrator.stats import Stats
from migrator.stores.base import Store

__all__ = ["Engine", "EngineOptions"]  # EngineOptions is imported from here by the CLI and the tests


class Engine:
    def __init__(
        self,
        plan: Plan,
        connect_src: Callable[[], Store],
        connect_dst: Callable[[], Store],
        checkpoint: Checkpoint | None,
        opts: EngineOptions,
        stats: Stats | None = None,
        stop: threading.Event | None = None,
        spare: tuple[Store, Store] | None = None,
        connect_watch: Callable[[], Store] | None = None,
    ):
        self.plan = plan
        self.opts = opts
        self.stats = stats or Stats()
        self.stop = stop or threading.Event()
        dst_side = ThreadPoolExecutor(max_workers=max(1, opts.workers), thread_name_prefix="dst-side")
        self.ctx = Context(plan, checkpoint, opts, self.stats, self.stop, dst_side)
        self.preparation = Preparation(self.ctx)
        self.scheduler = Scheduler(self.ctx, connect_src, connect_dst, spare)
        self.sync = FolderSync(self.ctx, self.scheduler)
        self.scheduler.sync = self.sync
        # --follow: source connections of its own for watching (by default like the workers')
        self.follower = (Follower(self.ctx, self.scheduler, self.preparation, connect_watch or connect_src)
                         if opts.follow is not None and not opts.dry_run else None)

    @property
    def would_create(self) -> list[Folder]:
        """Dry run: the destination folders a real run would create."""
        return self.ctx.would_create

    def run(self) -> Stats:
        folders = self.plan.copying()
        marks = self.preparation.watermarks(folders)  # read once, before preparing

        def prepare() -> list[MarchJob]:
            settled = self.scheduler.on_spare_pair(
                lambda src, dst: self.preparation.prepare(src, dst, folders, marks)) or set()
            return [MarchJob(fp) for fp in folders if fp.action != "failed" and fp.source not in settled]

        try:
            # Workers log in early only when there is copying to do: a folder without a usable watermark.
            self.scheduler.run(prepare, early=len(marks) < len(folders),
                               then=self.follower.run if self.follower else None)
        finally:
            self.ctx.dst_side.shutdown(wait=False)
        if self.ctx.fatal is not None:
            raise self.ctx.fatal
        self.stats.finish()
        return self.stats
