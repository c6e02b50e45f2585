"""What the parts of one engine run share (Context), and where a message's outcome is written (Ledger).

Context is read-mostly: the run's settings and what preparing the folders learnt. Ledger is the one
place that writes a message's outcome, to the three places that keep it: the checkpoint (the
journal: what the next run relies on), the report (stats) and the folder run's own tally (what its
watermark depends on).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from migrator.accounts import Endpoint
from migrator.checkpoint import ALTERED, DONE, Checkpoint, Intent
from migrator.engine.content import SERVED_CUT_SHORT
from migrator.engine.jobs import OVERQUOTA_HINT, EngineOptions, FolderRun
from migrator.engine.pairs import both_sides
from migrator.errors import BudgetSpent, StorageError
from migrator.governor import DayBudget, Governor
from migrator.naming import Folder
from migrator.plan import FolderPlan, Plan
from migrator.stats import Stats
from migrator.stores.base import FolderStatus

log = logging.getLogger("migrator.engine")


@dataclass
class Context:
    plan: Plan
    ckpt: Checkpoint | None
    opts: EngineOptions
    stats: Stats
    stop: threading.Event
    # Helper threads, kept for the run: a worker's destination calls run on one of them while the
    # worker makes its source calls (both_sides), so the two sides' round trips overlap.
    dst_side: ThreadPoolExecutor
    # Learnt while preparing (engine/prepare.py), before any folder is listed:
    src_status: dict[Folder, FolderStatus] = field(default_factory=dict)  # source STATUS: watermark base, ranking
    dst_status: dict[Folder, FolderStatus] = field(default_factory=dict)  # destination STATUS of folders ours
    would_create: list[Folder] = field(default_factory=list)  # dry run: folders a real run would create
    # What stopped the run at once (a local file that cannot be written: disk full, read-only, gone);
    # Engine.run raises it when the workers have stopped.
    fatal: StorageError | BudgetSpent | None = None

    @property
    def journal(self) -> Checkpoint | None:
        """The checkpoint, in a run that records what it does (not a dry run, not without state):
        what the march and the end write there only such a run writes."""
        return None if self.opts.dry_run else self.ckpt

    @property
    def writing(self) -> bool:
        """A real run with a journal: what it does is recorded (not a dry run, not without state)."""
        return self.journal is not None

    def why_refused(self, said: str, body: bytes) -> str:
        """A refusal's reason: the destination's words, and which of its known limits (a
        --dst-preset's: size, line length) the message is over."""
        rules = self.opts.destination
        over = rules.exceeded(body) if rules is not None else []
        return f"{said} ({'; '.join(over)})" if over else said

    def governor(self, side: str) -> Governor:
        """The throttle governor of the source's or the destination's host (governor.py)."""
        endpoint = self._endpoint(side)
        return self.opts.governors.get(side, endpoint.host or side, self.opts.workers)

    def budget(self, side: str) -> DayBudget:
        """The daily byte budget of the source's or the destination's account (governor.py)."""
        endpoint = self._endpoint(side)
        return self.opts.governors.budget(side, endpoint.host or side, endpoint.user)

    def _endpoint(self, side: str) -> Endpoint:
        return self.plan.source if side == "source" else self.plan.destination

    def both_sides(self, on_src: Callable, on_dst: Callable | None) -> tuple:
        return both_sides(on_src, on_dst, self.dst_side)

    def internal_error(self, fp: FolderPlan, e: Exception) -> None:
        """A bug: reported on its folder, and the run goes on. A StorageError stops the run instead:
        every folder after it would fail the same way; and so does a spent byte budget."""
        if isinstance(e, (StorageError, BudgetSpent)):
            self.abort(e)
            return
        log.exception("unexpected error")
        self.stats.folder_failed(fp.source, f"internal error: {type(e).__name__}: {e}")


    def abort(self, e: StorageError | BudgetSpent) -> None:
        """Stop the run at once, for this reason (the first one given is kept)."""
        if self.fatal is None:
            self.fatal = e
        self.stop.set()


class Ledger:
    """Records what became of messages: journal, report and the run's tally together."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def intents(self, run: FolderRun, intents: list[Intent]) -> None:
        """Before an APPEND: what is about to be sent (a crash after it is settled by the next march)."""
        ckpt, fp = self.ctx.ckpt, run.fp
        if ckpt:
            ckpt.record_intents(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity, intents)

    def confirm(self, run: FolderRun, results: Sequence[tuple[Intent, int | None]], status: str = DONE,
                reason: str | None = None) -> None:
        ckpt, fp = self.ctx.ckpt, run.fp
        if ckpt:
            ckpt.record_done(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity,
                             results, status, reason)

    def altered(self, run: FolderRun, intent: Intent, uid: int, reason: str, copied: bool = True) -> None:
        """A copy the destination stores with other bytes: reported, and recorded so that no rerun
        copies it again. copied: it was counted as copied by this run (it no longer is)."""
        self.confirm(run, [(intent, uid)], ALTERED, reason)
        self.fail(run, intent, reason, copied)

    def served_cut(self, run: FolderRun, results: Sequence[tuple[Intent, int | None]]) -> None:
        """Copies of messages the source served cut short (run.cut): recorded as altered, so every
        run reports them, and reported; still copied. One given no UID is recorded so once found
        (readback.find_claims)."""
        if not run.cut:  # after every APPEND: nothing to look at in almost every run
            return
        for intent, uid in results:
            if intent.src_uid in run.cut and uid is not None:
                # still counted as copied: it was, as served
                self.altered(run, intent, uid, SERVED_CUT_SHORT, copied=False)

    def failed(self, run: FolderRun, intent: Intent, reason: str, copied: bool = False) -> None:
        """Recorded as failed (the next run reports it, and copies it only with --retry-failed)."""
        ckpt, fp = self.ctx.ckpt, run.fp
        if ckpt:
            ckpt.record_failed(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity, intent, reason)
        self.fail(run, intent, reason, copied)

    def rejected(self, run: FolderRun, intent: Intent, reason: str) -> None:
        self.failed(run, intent, f"rejected by the destination: {reason}")
        if "OVERQUOTA" in reason.upper():
            self.ctx.stats.warn(OVERQUOTA_HINT)

    def fail(self, run: FolderRun, intent: Intent, reason: str, copied: bool = False) -> None:
        """A message of the folder failed: reported, and counted by the run (then no watermark).
        copied: it was counted as copied by this run (it no longer is)."""
        stats = self.ctx.stats
        stats.fail(run.fp.source, intent.src_uid, reason)
        run.count(failed=1, copied=-int(copied))
        if copied:
            stats.add(run.fp.source, copied=-1, copied_bytes=-intent.size)

    def count(self, run: FolderRun, **counts: int) -> None:
        """Copied, adopted: in the report (with bytes) and in the run's tally (without)."""
        self.ctx.stats.add(run.fp.source, **counts)
        run.count(**{k: v for k, v in counts.items() if not k.endswith("_bytes")})
