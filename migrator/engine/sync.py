"""The sync of one folder: march, then chunks, then the end (a FolderRun's phases, jobs.Phase).

The march lists both sides and decides (march.decide, like rclone's march + mbsync's sync.c):
  - source messages the checkpoint says were copied, whose copy is still on the destination:
    nothing to copy; flags brought in step;
  - destination messages the checkpoint cannot account for form a pool (matching.py), and a
    source message with an identical message in it adopts that one instead of being copied;
  - every other source message is copied.
The copy list is cut into chunks (copying.py) that any worker may take, so a big folder is
copied by several connections at once; a folder that fits in one batch is copied at once by the
march's worker, with both folders still open. The last chunk done ends the folder (ending.py).

Any transient failure makes the folder be marched again (Scheduler.retry: exponential backoff
with jitter, at most max_attempts marches); the new march settles pending intents by looking at
the destination.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from migrator.checkpoint import ALTERED
from migrator.engine.batching import chunks, one_batch
from migrator.engine.context import Context, Ledger
from migrator.engine.copying import Copier
from migrator.engine.crashpoints import crash
from migrator.engine.ending import FolderEnd
from migrator.engine.jobs import ChunkJob, Connections, FolderRun, MarchJob, Phase, appends_unseen
from migrator.engine.march import Decision, copy_flags, decide
from migrator.engine.matching import Matcher
from migrator.engine.readback import Check, ReadBack
from migrator.errors import ConnectionFailed, FolderError, TransientError
from migrator.naming import Folder, display
from migrator.plan import FolderPlan
from migrator.stores import calls
from migrator.stores.base import FolderStatus, MessageMeta, Store

if TYPE_CHECKING:  # the scheduler runs the jobs of this module; they queue work there
    from migrator.engine.scheduler import Scheduler

log = logging.getLogger("migrator.engine")


class _WaitForMerged(Exception):
    """Another source folder merged into the same destination still has APPENDs in flight."""


class FolderSync:
    def __init__(self, ctx: Context, scheduler: Scheduler):
        self.ctx = ctx
        self.scheduler = scheduler  # engine/scheduler.py: chunks and retries are queued there
        ledger = Ledger(ctx)
        self.readback = ReadBack(ctx, ledger)
        self.matcher = Matcher(ctx, ledger)
        self.copier = Copier(ctx, ledger)
        self.ending = FolderEnd(ctx, ledger, self.readback, scheduler)
        self.ledger = ledger
        self._reported: set[Folder] = set()  # folders whose march counts are in the report already

    # -- the jobs --------------------------------------------------------------------------------

    def run_march(self, job: MarchJob, conn: Connections) -> None:
        fp = job.fp
        try:
            run, at_once = self.march(fp, job.attempt, conn)
        except _WaitForMerged:
            if conn.deferred is not None:  # the folder waited for may be the one whose end this holds
                self.end_alone(conn)
            self.scheduler.later(job, 0.5)  # march again when it is done; no attempt is used up
            return
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            self.scheduler.retry(fp, job.attempt, str(e))
            return
        except FolderError as e:
            self.ctx.stats.folder_failed(fp.source, str(e))
            return
        if at_once is not None:
            self.run_chunk(at_once, conn)  # ends the folder
        elif run is not None:  # nothing to copy
            self.ending.end(run, conn, own_appends=True)

    def run_chunk(self, job: ChunkJob, conn: Connections) -> None:
        run, outcome, reason = job.run, None, ""
        try:
            if run.phase is Phase.COPYING:  # else another chunk failed: the folder is retried or given up
                self.copier.copy_chunk(run, job.metas, conn, job.opened)
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            outcome, reason = Phase.RETRY, str(e)
        except FolderError as e:
            self.ctx.stats.folder_failed(run.fp.source, str(e))
            outcome = Phase.FAILED  # not transient: the folder is given up, not retried
        finally:
            phase = run.chunk_done(outcome, reason)
        if phase is None or self.ctx.stop.is_set():
            return
        if phase is Phase.COPIED:
            # Copied at once by the march's worker: every APPEND went through this connection.
            self.ending.end(run, conn, own_appends=job.opened is not None)
        elif phase is Phase.RETRY:
            self.scheduler.retry(run.fp, run.attempt, run.transient)

    def end_alone(self, conn: Connections) -> None:
        """The folder end deferred on conn, sent alone (the worker's next job cannot carry it)."""
        self.ending.alone(conn)

    # -- the march -------------------------------------------------------------------------------

    def march(self, fp: FolderPlan, attempt: int, conn: Connections) -> tuple[FolderRun | None, ChunkJob | None]:
        """List both sides and decide; queue the copying as chunks. Returns (run, None) when the
        folder is to be ended now (nothing to copy), or (None, chunk) for a folder whose copying
        fits in one batch: this worker copies it at once, with both folders still open (on a WAN,
        two round trips less per small folder than reopening them in a queued chunk). Else
        (None, None): a dry run, the stop, or chunks queued (the last one done ends the folder)."""
        ctx, opts = self.ctx, self.ctx.opts
        src, dst = conn.both()
        self._wait_for_earlier(fp, src, dst)
        first = fp.source not in self._reported
        s_status, s_st, src_msgs, listed = self._list(fp, conn, first)
        run = FolderRun(fp, attempt, s_st.uidvalidity, src_status=s_status)
        run.identities = {m.uid: m.identity for m in src_msgs if m.identity}
        dst_msgs = self._listed_destination(run, listed)
        crash("march-listed")
        if (journal := ctx.journal) is not None:
            journal.set_watermark(fp.source, fp.destination, None)  # not complete until its end
        dec = self._decide(run, dst, src_msgs, dst_msgs, listed is not None)
        if listed is not None and self._waited_for_in_flight(fp, dst, dec):
            return self.march(fp, attempt, conn)  # listed again: what landed meanwhile is adopted
        run.in_doubt = dec.in_doubt
        self._exclude_merged(fp, run, dec)
        pairs = self._reconcile(run, src, dst, dec, src_msgs)
        if pairs is None:  # stopped meanwhile
            return None, None
        if first:
            self._reported.add(fp.source)
            self._report(fp, dec)
        if (dec.flag_updates or pairs) and not opts.dry_run and not conn.dst_selected_writable(fp.destination):
            conn.select_dst(fp.destination, readonly=False)  # listed read-only (appends_unseen): STOREs follow
        self._sync_flags(run, dst, dec.flag_updates)
        if opts.dry_run:
            self._report_dry_run(run, dec, pairs)
            return None, None
        if first:
            ctx.stats.add(fp.source, planned=len(dec.to_copy), planned_bytes=sum(m.size for m in dec.to_copy))
        to_copy = self.matcher.adopt(run, dst, dec.to_copy, pairs)
        return self._queue_chunks(run, dst, to_copy, (s_st, listed[0]))

    def _list(self, fp: FolderPlan, conn: Connections, first: bool):
        """Both folders opened and listed at the same time (the previous folder's end, if deferred
        on conn, goes with the destination's): (source STATUS for the watermark or None, source
        SELECT, source listing, (destination SELECT, listing) or None if it is still to be created)."""
        ctx, opts = self.ctx, self.ctx.opts
        src, dst = conn.both()

        def list_source():
            # STATUS before listing: whatever changes after it shows in the next run's STATUS.
            # Usually it was taken for all folders at once while preparing (engine/prepare.py).
            status = None
            if ctx.writing:
                status = ctx.src_status.get(fp.source) or src.status(fp.source)
            # With its message count known, the folder is opened and listed in one round trip;
            # a small folder never copied before comes with its bodies (_copies_whole).
            known = status or ctx.src_status.get(fp.source)
            expect = known.messages if known else None
            # Not with identities: a message another folder copied is not downloaded again (within.py).
            bodies = self._copies_whole(fp, known) and not src.capabilities.identities
            return (status, *calls.select_and_list(src, fp.source, readonly=True, expect=expect, bodies=bodies))

        def list_destination():
            # Its size as STATUS showed it while preparing (None: created by this run, so empty)
            # lets a small folder be opened and listed in one round trip.
            known = ctx.dst_status.get(fp.destination)
            expect = known.messages if known else None
            ended = conn.take_deferred()
            readonly = opts.dry_run or appends_unseen(dst)
            if ended is not None:  # the previous folder's end goes in the same round trip
                return self.ending.with_open(ended, conn, fp.destination, readonly, expect)
            return conn.select_and_list_dst(fp.destination, readonly, expect)

        to_create = opts.dry_run and fp.destination in ctx.would_create
        (s_status, s_st, src_msgs), listed = ctx.both_sides(list_source, None if to_create else list_destination)
        if fp.uidvalidity and s_st.uidvalidity != fp.uidvalidity and first:
            ctx.stats.warn(
                f"source folder '{display(fp.source)}' has a new UIDVALIDITY since it was planned "
                f"({fp.uidvalidity} -> {s_st.uidvalidity}); its messages are matched by content"
            )
        return s_status, s_st, src_msgs, listed

    @staticmethod
    def _listed_destination(run: FolderRun, listed) -> list[MessageMeta]:
        """The destination's listing, and what the run keeps of it (for the watermark)."""
        if listed is None:
            return []
        d_st, dst_msgs = listed
        run.dst_uidvalidity, run.dst_uidnext, run.dst_messages = d_st.uidvalidity, d_st.uidnext, len(dst_msgs)
        run.dst_consistent = d_st.messages == len(dst_msgs)
        return dst_msgs

    def _decide(self, run: FolderRun, dst: Store, src_msgs: list[MessageMeta], dst_msgs: list[MessageMeta],
                listed: bool) -> Decision:
        ctx, opts, fp = self.ctx, self.ctx.opts, run.fp
        rows = ctx.ckpt.rows(fp.source, run.src_uidvalidity, fp.destination) if ctx.ckpt else {}
        if listed and (journal := ctx.journal) is not None:
            rows, dst_msgs = self.matcher.take_late_twins(run, dst, journal, rows, dst_msgs)
        ceiling = opts.destination.max_message_ceiling if opts.destination else None  # a --dst-preset's
        limits = [n for n in (dst.capabilities.max_append_size, opts.max_message_size, ceiling) if n]
        # leftover (Gmail's All Mail): only the messages no other copied folder shows
        elsewhere = frozenset(o.source for o in ctx.plan.copying() if o.source != fp.source) if fp.leftover else None
        return decide(src_msgs, dst_msgs, rows, run.dst_uidvalidity, include_deleted=opts.include_deleted,
                      sync_flags=opts.sync_flags, retry_failed=opts.retry_failed, filters=ctx.plan.filters,
                      size_limit=min(limits) if limits else None, flag_rules=opts.flag_rules, elsewhere=elsewhere)

    def _reconcile(self, run: FolderRun, src: Store, dst: Store, dec: Decision,
                   src_msgs: list[MessageMeta]) -> dict | None:
        """What the destination already holds: pairs with the pool (matching.py), claims settled,
        altered copies found, copies of earlier runs read back; the run's tally of what it found.
        Returns the pairs (None if stopped meanwhile)."""
        journal = self.ctx.journal
        pairs = self.matcher.pair_with_pool(run, src, dst, dec, src_msgs)
        if pairs is None:
            return None
        self.matcher.settle_claims(run, dec.claims, pairs)
        if journal is not None:
            self.matcher.match_altered(run, src, dst, journal, dec, pairs, src_msgs)
            for row, reason in dec.newly_altered:
                self.ledger.confirm(run, [(row.intent(), row.dst_uid)], ALTERED, reason)
        if dec.to_verify and not self.ctx.opts.dry_run:
            # Copies a run stored but stopped before reading back (a crash, a cut connection):
            # their bytes are compared now, in the folder the march just opened.
            self.readback.read(run, dst, [Check(r.intent(), uid)
                                          for r, uid in dec.to_verify])
        altered = {row.src_uid for row, _reason in dec.newly_altered}
        with run.lock:  # copied by an earlier run: a failed date check does not uncount this run's copies
            run.dated.extend((r.intent(), uid, False) for r, uid in dec.dated if r.src_uid not in altered)
        run.count(already=dec.already, skipped_deleted=dec.deleted_skipped, filtered=sum(dec.filtered.values()),
                  failed=len(dec.altered) + len(dec.failed_earlier) + len(dec.too_big))
        return pairs

    def _report(self, fp: FolderPlan, dec: Decision) -> None:
        """The march's findings, into the report (once per folder, not per attempt)."""
        stats = self.ctx.stats
        stats.skip(fp.source, "flagged \\Deleted on the source (--include-deleted copies them)", dec.deleted_skipped)
        for reason, n in dec.filtered.items():
            stats.skip(fp.source, f"filtered out: {reason}", n)
        stats.add(fp.source, already=dec.already)
        for uid, reason in dec.too_big:
            stats.fail(fp.source, uid, reason)
        for uid, reason in dec.altered:
            stats.fail(fp.source, uid, reason)
        for uid, reason in dec.failed_earlier:
            stats.fail(fp.source, uid, f"{reason} (failed in an earlier run; --retry-failed tries again)")

    def _report_dry_run(self, run: FolderRun, dec: Decision, pairs: dict) -> None:
        stats, fp = self.ctx.stats, run.fp
        adoptable = sum(1 for m in dec.to_copy if m.uid in pairs)
        stats.add(fp.source, planned=len(dec.to_copy) - adoptable,
                  planned_bytes=sum(m.size for m in dec.to_copy), found=adoptable)
        if self.ctx.opts.delete_extra:
            stats.add(fp.source, deleted_extra=len(run.extras) + len(run.pool))

    def _queue_chunks(self, run: FolderRun, dst: Store, to_copy: list[MessageMeta],
                      opened: tuple[FolderStatus, FolderStatus]) -> tuple[FolderRun | None, ChunkJob | None]:
        """Cut what is left to copy into chunks: queued, or returned to be copied at once by this
        worker if it fits in one batch (opened: both folders' SELECT answers, still open here).
        Nothing to copy: the run is returned, to be ended now (march's answer)."""
        opts = self.ctx.opts
        # Without UIDs, copies are found by content at the folder's end, and one session at a time
        # appends to a folder (imap4d loses messages APPENDed to one mbox by several at once).
        pieces = ([to_copy] if to_copy else []) if appends_unseen(dst) else chunks(
            to_copy, opts.chunk_messages, max(opts.batch_bytes * 8, 1))
        if not pieces:
            run.advance(Phase.COPIED)
            return run, None
        run.pending_chunks = len(pieces)
        run.advance(Phase.COPYING)  # before any chunk can be taken
        if len(pieces) == 1 and one_batch(pieces[0], opts.batch_bytes, opts.batch_count):
            return None, ChunkJob(run, pieces[0], opened=opened)
        for piece in pieces:  # from now on the run is its chunks': the last one done ends it
            self.scheduler.put(ChunkJob(run, piece))
        return None, None

    def _waited_for_in_flight(self, fp: FolderPlan, dst: Store, dec: Decision) -> bool:
        """An APPEND sent just before a crash or a cut connection may be committed by the server
        after this listing: copying its message now would make two. So a march that finds intents
        left pending less than in_flight_grace seconds ago waits out the rest, and lists again."""
        ctx = self.ctx
        if ctx.opts.dry_run or not dec.in_doubt or not dst.capabilities.late_commits:
            return False
        wait = max(r.updated for r in dec.in_doubt.values()) + ctx.opts.in_flight_grace - time.time()
        if wait <= 0:
            return False
        log.info("'%s': waiting %.1f s for APPENDs that may still be in flight", display(fp.source), wait)
        ctx.stop.wait(wait)
        return not ctx.stop.is_set()

    def _copies_whole(self, fp: FolderPlan, known: FolderStatus | None) -> bool:
        """Whether the march can read the folder's bodies along with its listing: STATUS shows it
        fits in one batch, and the checkpoint has nothing of it (so all of it will be copied)."""
        ctx, opts = self.ctx, self.ctx.opts
        return (known is not None and known.size is not None and ctx.ckpt is not None and not opts.dry_run
                and 0 < known.messages <= opts.batch_count and known.size <= opts.batch_bytes
                and not ctx.ckpt.has_rows(fp.source, known.uidvalidity, fp.destination))

    def _wait_for_earlier(self, fp: FolderPlan, src: Store, dst: Store) -> None:
        """A source whose messages show in several folders (identities: Gmail's labels), or a
        destination that holds one copy per account (labels: Gmail): the folders are marched one
        after the other, in plan order, so that a message's first copy is confirmed before another
        folder decides to COPY or label it within the destination (within.py)."""
        if fp.leftover and not src.capabilities.identities:
            raise FolderError(f"{self.ctx.plan.where(fp)}leftover = true: the source does not say which folders "
                              "show each message (it offers no X-GM-EXT-1); copying it would duplicate them")
        if not (src.capabilities.identities or dst.capabilities.labels) or self.ctx.opts.dry_run:
            return
        order = [o.source for o in self.ctx.plan.copying()]
        earlier = order[: order.index(fp.source)] if fp.source in order else []
        if any(self.scheduler.in_progress(o) for o in earlier):
            raise _WaitForMerged()  # marched again when they are done; no attempt is used up

    def _exclude_merged(self, fp: FolderPlan, run: FolderRun, dec: Decision) -> None:
        """merge = true: messages another source folder copied here are not ours to adopt.

        Without this, two merged folders holding the same message would end with one
        copy (the second would adopt the first one's). Folders merged into one
        destination are therefore copied one after the other, in plan order (a folder
        waits while an earlier one still has work queued: no deadlock), and each leaves
        alone what the others' checkpoint rows point to. A copy left unconfirmed by a
        crash may still be adopted by another merged folder: the owner then copies its
        message again, so the count stays right.
        """
        ckpt = self.ctx.ckpt
        group = [o.source for o in self.ctx.plan.copying() if o.destination == fp.destination]
        if len(group) < 2 or ckpt is None:
            return
        earlier = group[: group.index(fp.source)]
        if any(self.scheduler.in_progress(o) for o in earlier):
            raise _WaitForMerged()  # march again when it is done; no attempt is used up
        claimed = ckpt.claims_of_others(fp.destination, run.dst_uidvalidity, fp.source, group)
        dec.unaccounted = [m for m in dec.unaccounted if m.uid not in claimed]

    def _sync_flags(self, run: FolderRun, dst: Store, updates: list[tuple[MessageMeta, MessageMeta]]) -> None:
        if not updates:
            return
        ctx, fp = self.ctx, run.fp
        if ctx.opts.dry_run:
            ctx.stats.add(fp.source, flags_updated=len(updates))
            return
        done = []
        for src_meta, dst_meta in updates:
            want = set(copy_flags(src_meta, ctx.opts.include_deleted))
            dst.set_flags(dst_meta.uid, *ctx.opts.flag_rules.changes(want, dst_meta.flags))
            crash("flags-set")
            done.append((src_meta.uid, tuple(sorted(want))))
        if ctx.ckpt:
            ctx.ckpt.update_flags(fp.source, run.src_uidvalidity, fp.destination, done)
        ctx.stats.add(fp.source, flags_updated=len(done))
