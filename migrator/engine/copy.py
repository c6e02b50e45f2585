"""The copy engine: one engine for every pair of stores.

Per folder, a *march* compares source, destination and checkpoint and decides
what to do (engine/march.py, like rclone's march + mbsync's sync.c):
  - source messages the checkpoint says were copied, whose copy is still on the
    destination: nothing to copy; flags brought in step;
  - destination messages the checkpoint cannot account for (a crash between
    APPEND and its confirmation, a lost state file, a UIDVALIDITY reset, a
    non-empty destination) form a *pool*, keyed by SHA-256 of their bytes;
  - every other source message is copied, unless an identical message is still
    in the pool: then that one is adopted instead (multiset matching, so two
    identical source messages need two identical destination messages). Which
    twin adopts which copy is decided by the march for each group of identical
    messages as a whole (INTERNALDATE, then flags), before any is adopted or copied.
The march's copy list is cut into chunks that any worker may take, so a big
folder is copied by several connections at once.

Safety: the intent (source UID, size, flags) is committed to the checkpoint before
each APPEND and confirmed after it (with the SHA-256 when the destination gave no
UID: then only the fingerprint can find the copy again). Any transient failure
makes the folder be marched again (exponential backoff with jitter, at most
max_attempts marches), which settles pending intents by looking at the destination.

Fast reruns: when a folder pair is left complete, the STATUS of both sides is
stored as a watermark; a rerun that sees the same UIDVALIDITY, UIDNEXT,
MESSAGES and HIGHESTMODSEQ on both sides skips the folder without listing it.
Without CONDSTORE (no HIGHESTMODSEQ) flag changes are invisible to STATUS, so
every rerun marches. See docs/resume.md.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import math
import queue
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from migrator.checkpoint import ALTERED, DONE, UNVERIFIED, Checkpoint, Intent, Resent, Watermark
from migrator.engine.batching import batches, chunks, one_batch
from migrator.engine.content import Shape, at_risk, describe_change, loose_digest, loose_window, same_size_change
from migrator.engine.content import fingerprint as sha256
from migrator.engine.crashpoints import crash
from migrator.engine.jobs import (  # noqa: F401  (EngineOptions is imported from here by the CLI)
    OVERQUOTA_HINT, ChunkJob, EngineOptions, FolderRun, MarchJob, close_quietly, Connections,
)
from migrator.engine.march import Wanted, altered_reason, copy_flags, decide, late_twin_candidates, pool_candidates
from migrator.errors import ConnectionFailed, FolderError, MessageRejected, TransientError
from migrator.naming import Folder, display, parents
from migrator.plan import FolderPlan, Plan
from migrator.stats import Stats
from migrator.engine.pairs import both_sides, open_pair
from migrator.stores import calls
from migrator.stores.base import AppendItem, FolderStatus, Message, MessageMeta, Store

log = logging.getLogger("migrator.engine")

# A copy sent again is watched for a late twin this long: no server commits an APPEND a day
# after its connection died (docs/resume.md).
LATE_COMMIT_WINDOW = 86400.0

TYPICAL_MESSAGE_BYTES = 50_000  # only to rank a folder whose STATUS has no SIZE among the others

# -- the engine ------------------------------------------------------------------------------


class Engine:
    def __init__(
        self,
        plan: Plan,
        open_src: Callable[[], Store],
        open_dst: Callable[[], Store],
        checkpoint: Checkpoint | None,
        opts: EngineOptions,
        stats: Stats | None = None,
        stop: threading.Event | None = None,
        spare: tuple[Store, Store] | None = None,
    ):
        self.plan = plan
        # Open connections handed over by the planner: used to prepare folders, then by a worker,
        # so a run logs in once less per side (several round trips each on a WAN).
        self._spare = spare
        self._spare_lock = threading.Lock()
        self.open_src = open_src
        self.open_dst = open_dst
        self.ckpt = checkpoint
        self.opts = opts
        self.stats = stats or Stats()
        self.stop = stop or threading.Event()
        self.would_create: list[Folder] = []
        # Biggest work first (a big chunk taken last leaves the other workers idle at the end):
        # chunks by their bytes, marches by their folder's (a big folder's march finds big chunks;
        # a big chunk goes before the marches of small folders); a stop sentinel before anything.
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._outstanding = 0
        self._outstanding_lock = threading.Lock()
        self._all_done = threading.Condition(self._outstanding_lock)  # notified when nothing is outstanding
        self._live: Counter = Counter()  # source folder -> its queued or running jobs
        self._reported: set[Folder] = set()  # folders whose march counts are in stats already
        self._marks: dict[Folder, Watermark] = {}  # usable watermarks, read by run()
        self._settled: set[Folder] = set()  # source folders found unchanged since the last run
        self._src_status: dict[Folder, FolderStatus] = {}  # taken while preparing, before any listing
        self._dst_existed: set[Folder] = set()  # destination folders there before this run
        self._dst_status: dict[Folder, FolderStatus] = {}  # ... and their STATUS while preparing
        self._sampled = False  # the run's first copy was taken to be read back (_to_read_back)
        self._sample_lock = threading.Lock()
        self._dst_side = ThreadPoolExecutor(max_workers=max(1, opts.workers), thread_name_prefix="dst-side")

    # -- top level -----------------------------------------------------------------------

    def run(self) -> Stats:
        folders = self.plan.copying()
        n = max(1, self.opts.workers)
        # When there is copying to do (a folder without a usable watermark), workers 1..n-1 log
        # in while the folders are prepared, instead of after: on a WAN that is several round
        # trips off the critical path. Worker 0 takes the planning connections afterwards.
        self._marks = self._watermarks(folders)
        early = n > 1 and len(self._marks) < len(folders)
        threads = [
            threading.Thread(target=self._worker, args=(early and i > 0,), name=f"worker-{i}", daemon=True)
            for i in range(n)
        ]
        started: list[threading.Thread] = []
        try:
            if early:
                for t in threads[1:]:
                    t.start()
                    started.append(t)
            self._prepare_with_retries(folders)
            for fp in folders:
                if fp.action != "failed" and fp.source not in self._settled:
                    self._put(MarchJob(fp))
            for t in threads:
                if t not in started:
                    t.start()
                    started.append(t)
            try:
                with self._all_done:  # woken by the last job's end; the timeout is for stop
                    while self._outstanding and not self.stop.is_set():
                        self._all_done.wait(0.2)
            except KeyboardInterrupt:
                self.stop.set()
        finally:
            self._stop_workers(started)
        self.stats.finish()
        return self.stats

    def _stop_workers(self, threads: list[threading.Thread]) -> None:
        if self.stop.is_set():
            self.stats.interrupted = True
        for _ in threads:
            self._q.put(((-math.inf, next(self._seq)), None))
        # Interrupted: give workers a few seconds to finish the batch in hand, then leave them
        # (daemon threads). Safe: an APPEND is only sent after its intent is committed.
        deadline = time.monotonic() + self.opts.stop_grace
        for t in threads:
            while t.is_alive() and not (self.stop.is_set() and time.monotonic() > deadline):
                t.join(0.2)
        for store in self._take_spare() or ():
            close_quietly(store)
        self._dst_side.shutdown(wait=False)

    def _watermarks(self, folders: list[FolderPlan]) -> dict[Folder, Watermark]:
        """Source folder -> its pair's watermark, for the folders a fast rerun may skip
        (left complete by a run with these options); read once, before preparing."""
        if self.ckpt is None or self.opts.retry_failed:
            return {}
        key, out = self.opts.key(), {}
        for fp in folders:
            wm = self.ckpt.watermark(fp.source, fp.destination)
            if wm is not None and wm.options == key:
                out[fp.source] = wm
        return out

    def _take_spare(self) -> tuple[Store, Store] | None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
            return spare

    def _prepare_with_retries(self, folders: list[FolderPlan]) -> None:
        for attempt in range(1, self.opts.max_attempts + 1):
            src = dst = None
            try:
                src, dst = self._take_spare() or open_pair(self.open_src, self.open_dst)
                # The planner's listing of the destination, if it was just made, saves a LIST; used
                # once (a retry lists again). The source's STATUS is taken meanwhile.
                listed, self.plan.destination_listing = self.plan.destination_listing, None
                statuses = (lambda: calls.statuses(src, [fp.source for fp in folders])) if self.ckpt is not None else dict
                self._src_status, _ = self._both_sides(statuses,
                                                       lambda: self._prepare_destination(dst, folders, listed))
                self._settled = self._settle_unchanged(dst, folders)
                with self._spare_lock:
                    self._spare = (src, dst)  # for the first worker
                src = dst = None
                return
            except TransientError as e:
                if attempt == self.opts.max_attempts:
                    raise
                self.stats.warn(f"preparing folders: {e}; retrying")
                if self.stop.wait(self._backoff(attempt)):
                    return
            finally:
                for store in (src, dst):
                    if store is not None:
                        close_quietly(store)

    def _prepare_destination(self, dst: Store, folders: list[FolderPlan], listed=None) -> None:
        """Create missing destination folders (empty ones too) and copy subscriptions.

        All CREATEs go in one pipelined batch, then all SUBSCRIBEs: two round trips, not
        two per folder (a WAN migration of 200 folders would otherwise wait 400 RTTs here).
        listed: the destination's folders as just listed, or None to list them now."""
        if listed is None:
            listed = dst.list_folders()
        existing = {f.name for f in listed}
        self._dst_existed = set(existing)
        # The plan says what to subscribe (planner: as on the source, or --subscribe all/none);
        # a destination folder that already existed is subscribed too.
        dst_subscribed = {f.name for f in listed if f.subscribed}
        to_create: dict[Folder, FolderPlan] = {}
        for fp in folders:
            if fp.destination not in existing and fp.destination not in to_create:
                to_create[fp.destination] = fp
                existing.update(parents(fp.destination))  # the server creates those with it
        if self.opts.dry_run:
            self.would_create.extend(to_create)
            return
        created = calls.create_folders(dst, [(name, fp.special_use) for name, fp in to_create.items()]) if to_create else {}
        for name, error in created.items():
            if error is None:
                self.stats.mark_created(name)
        for fp in folders:
            if created.get(fp.destination):
                self.stats.folder_failed(fp.source, created[fp.destination])
                fp.action = "failed"
        to_subscribe = list(dict.fromkeys(
            fp.destination for fp in folders
            if fp.subscribed and fp.action != "failed" and fp.destination not in dst_subscribed))
        for name, error in (calls.subscribe_folders(dst, to_subscribe) if to_subscribe else {}).items():
            if error:
                self.stats.warn(f"cannot subscribe '{display(name)}': {error}")

    # -- queue bookkeeping ----------------------------------------------------------------

    def _put(self, job) -> None:
        self._hold(_source(job))  # a retry is put before its failed job is done: stays > 0
        work = self._expected_bytes(job.fp) if isinstance(job, MarchJob) else sum(m.size for m in job.metas)
        self._q.put(((-work, next(self._seq)), job))

    def _expected_bytes(self, fp: FolderPlan) -> float:
        """How much a folder's march may lead to copying, to rank it among the chunks: its size as
        its STATUS gave it (or its message count times a typical size); unknown comes first."""
        st = self._src_status.get(fp.source)
        if st is None:
            return math.inf
        return st.size if st.size is not None else st.messages * TYPICAL_MESSAGE_BYTES

    def _done(self, job) -> None:
        self._release(_source(job))

    def _hold(self, folder: Folder) -> None:
        """Count work of `folder` as outstanding: a queued or running job, or a deferred folder end."""
        with self._outstanding_lock:
            self._outstanding += 1
            self._live[folder] += 1

    def _release(self, folder: Folder) -> None:
        with self._outstanding_lock:
            self._outstanding -= 1
            self._live[folder] -= 1
            if not self._outstanding:
                self._all_done.notify_all()

    def _in_progress(self, folder: Folder) -> bool:
        with self._outstanding_lock:
            return self._live[folder] > 0

    def _backoff(self, attempt: int) -> float:
        delay = min(self.opts.backoff_max, self.opts.backoff_base * (2 ** (attempt - 1)))
        return delay * (0.5 + random.random() / 2)

    # -- workers ---------------------------------------------------------------------------

    def _worker(self, log_in_now: bool = False) -> None:
        conn = Connections(self.open_src, self.open_dst, None if log_in_now else self._take_spare())
        if log_in_now:
            try:
                conn.both()
            except (TransientError, ConnectionFailed):
                conn.drop()  # the first job connects again, and reports what fails
        try:
            while True:
                job = self._next_job(conn)
                if job is None:
                    return
                try:
                    if self.stop.is_set():
                        continue
                    if isinstance(job, MarchJob):
                        wait = job.not_before - time.monotonic()
                        if wait > 0 and self.stop.wait(wait):
                            continue
                        self._run_march(job, conn)
                    else:
                        self._run_chunk(job, conn)
                except Exception as e:  # a bug must not hang the run: report it on the folder
                    self._internal_error(job.fp if isinstance(job, MarchJob) else job.run.fp, e)
                finally:
                    self._done(job)
        finally:
            if conn.deferred is not None:  # only if a bug ended the loop: keep the count right
                self._release(conn.take_deferred().fp.source)
            conn.close()

    def _next_job(self, conn: Connections):
        """The next job from the queue. A folder end deferred on this worker's connection goes with
        the job's first destination round trip if it is a march that can start now; before
        anything else (another kind of job, a wait, an empty queue, the stop) it is sent alone."""
        if conn.deferred is not None:
            try:
                _rank, job = self._q.get_nowait()
            except queue.Empty:
                self._finish_deferred(conn)
            else:
                if not (isinstance(job, MarchJob) and job.not_before <= time.monotonic() and not self.stop.is_set()):
                    self._finish_deferred(conn)
                return job
        return self._q.get()[1]

    def _retry_folder(self, fp: FolderPlan, attempt: int, reason: str) -> None:
        if self.stop.is_set():
            return
        if attempt >= self.opts.max_attempts:
            self.stats.folder_failed(
                fp.source, f"gave up after {attempt} attempts: {reason} (rerun the same command to resume)"
            )
            return
        self.stats.warn(f"'{display(fp.source)}': {reason}; retrying")
        self._put(MarchJob(fp, attempt + 1, time.monotonic() + self._backoff(attempt)))

    # -- march: decide what one folder needs ----------------------------------------------------

    def _run_march(self, job: MarchJob, conn: Connections) -> None:
        fp = job.fp
        try:
            run, at_once = self._march(fp, job.attempt, conn)
        except _WaitForMerged:
            self._put(MarchJob(fp, job.attempt, time.monotonic() + 0.5))
            return
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            self._retry_folder(fp, job.attempt, str(e))
            return
        except FolderError as e:
            self.stats.folder_failed(fp.source, str(e))
            return
        if at_once is not None:
            self._run_chunk(at_once, conn)  # finishes the folder
        elif run is not None and run.pending_chunks == 0:
            self._end_folder(run, conn, own_appends=True)

    def _both_sides(self, on_src: Callable, on_dst: Callable | None) -> tuple:
        return both_sides(on_src, on_dst, self._dst_side)  # the engine's helper threads, kept for the run

    def _settle_unchanged(self, dst: Store, folders: list[FolderPlan]) -> set[Folder]:
        """Fast rerun: the source folders whose pair still shows, on both sides, the STATUS stored
        when it was left complete. One pipelined STATUS batch per side for all of them, so a
        rerun with nothing new costs two round trips, not two per folder plus a login per worker.

        The destination's batch also asks the folders this state copied into that have no usable
        watermark (an interrupted migration resumed, a server without CONDSTORE, other options):
        their message count lets the march open and list them in one round trip (select_and_list's
        expect). A first run asks nothing: its folders are new, or empty, or not ours."""
        marks = {fp.source: (fp, self._marks[fp.source]) for fp in folders
                 if fp.action != "failed" and fp.source in self._marks}
        ours = [fp.destination for fp in folders
                if fp.action != "failed" and fp.source not in marks and fp.destination in self._dst_existed]
        wanted = list(dict.fromkeys([fp.destination for fp, _wm in marks.values()]
                                    + sorted(self.ckpt.copied_into(ours) if self.ckpt and ours else ())))
        if not wanted:
            return set()
        self._dst_status = d_st = calls.statuses(dst, wanted)
        s_st = self._src_status
        settled = set()
        for source, (fp, wm) in marks.items():
            s, d = s_st.get(fp.source), d_st.get(fp.destination)
            if s is None or d is None or not _matches(wm, s, d):
                continue
            self.stats.add(fp.source, already=wm.settled)
            self.stats.skip(fp.source, "flagged \\Deleted on the source (--include-deleted copies them)",
                            wm.skipped_deleted)
            settled.add(source)
        return settled

    def _march(self, fp: FolderPlan, attempt: int, conn: Connections) -> tuple[FolderRun | None, ChunkJob | None]:
        """List both sides and decide; queue the copying as chunks. Returns the folder's run (None
        on a dry run) and, for a folder whose copying fits in one batch, that chunk instead of
        queueing it: this worker copies it at once, with both folders still open (on a WAN, two
        round trips less per small folder than reopening them in a queued chunk)."""
        opts, stats = self.opts, self.stats
        src, dst = conn.both()
        first = fp.source not in self._reported

        def list_source():
            # STATUS before listing: whatever changes after it shows in the next run's STATUS.
            # Usually it was taken for all folders at once while preparing (_prepare_with_retries).
            status = None
            if self.ckpt and not opts.dry_run:
                status = self._src_status.get(fp.source) or src.status(fp.source)
            # With its message count known, the folder is opened and listed in one round trip;
            # a small folder never copied before comes with its bodies (_copies_whole).
            known = status or self._src_status.get(fp.source)
            return (status, *calls.select_and_list(src, fp.source, readonly=True, expect=known.messages if known else None,
                                                 bodies=self._copies_whole(fp, known)))

        def list_destination():
            # Its size as STATUS showed it while preparing (None: created by this run, so empty)
            # lets a small folder be opened and listed in one round trip.
            known = self._dst_status.get(fp.destination)
            expect = known.messages if known else None
            ended = conn.take_deferred()
            readonly = opts.dry_run or _appends_unseen(dst)
            if ended is not None:  # the previous folder's end goes in the same round trip
                return self._end_and_open(ended, conn, fp.destination, readonly, expect)
            return conn.open_dst(fp.destination, readonly, expect)

        to_create = opts.dry_run and fp.destination in self.would_create
        (s_status, s_st, src_msgs), listed = self._both_sides(list_source, None if to_create else list_destination)
        if fp.uidvalidity and s_st.uidvalidity != fp.uidvalidity and first:
            stats.warn(
                f"source folder '{display(fp.source)}' has a new UIDVALIDITY since it was planned "
                f"({fp.uidvalidity} -> {s_st.uidvalidity}); its messages are matched by content"
            )
        run = FolderRun(fp, attempt, s_st.uidvalidity, src_status=s_status)
        if listed is None:
            dst_msgs = []
        else:
            d_st, dst_msgs = listed
            run.dst_uidvalidity, run.dst_uidnext, run.dst_messages = d_st.uidvalidity, d_st.uidnext, len(dst_msgs)
            run.dst_consistent = d_st.messages == len(dst_msgs)
        crash("march-listed")
        if self.ckpt and not opts.dry_run:
            self.ckpt.set_watermark(fp.source, fp.destination, None)  # not complete until _finish_folder
        rows = self.ckpt.rows(fp.source, s_st.uidvalidity, fp.destination) if self.ckpt else {}
        if self.ckpt and listed is not None and not opts.dry_run:
            rows, dst_msgs = self._take_late_twins(run, dst, rows, dst_msgs)
        dec = decide(src_msgs, dst_msgs, rows, run.dst_uidvalidity, include_deleted=opts.include_deleted,
                     sync_flags=opts.sync_flags, retry_failed=opts.retry_failed)
        if listed is not None and self._waited_for_in_flight(fp, dst, dec):
            return self._march(fp, attempt, conn)  # listed again: what landed meanwhile is adopted
        run.in_doubt = dec.in_doubt
        self._exclude_merged(fp, run, dec)
        pairs = self._pair_with_pool(run, src, dst, dec, src_msgs)
        if pairs is None:  # stopped meanwhile
            return None, None
        self._settle_claims(run, dec.claims, pairs)
        if not opts.dry_run and self.ckpt is not None:
            self._match_altered(run, src, dst, dec, pairs, src_msgs)
        if dec.newly_altered and self.ckpt and not opts.dry_run:
            for row, reason in dec.newly_altered:
                self._confirm(run, [(Intent(row.src_uid, row.size, row.sha256, row.flags), row.dst_uid)], ALTERED, reason)
        if dec.to_verify and not opts.dry_run:
            self._verify_rows(run, dst, dec.to_verify)
        run.count(already=dec.already, skipped_deleted=dec.deleted_skipped,
                  failed=len(dec.altered) + len(dec.failed_earlier))
        if first:
            self._reported.add(fp.source)
            stats.skip(fp.source, "flagged \\Deleted on the source (--include-deleted copies them)",
                       dec.deleted_skipped)
            stats.add(fp.source, already=dec.already)
            for uid, reason in dec.altered:
                stats.fail(fp.source, uid, reason)
            for uid, reason in dec.failed_earlier:
                stats.fail(fp.source, uid, f"{reason} (failed in an earlier run; --retry-failed tries again)")
        if (dec.flag_updates or pairs) and not opts.dry_run and not conn.dst_selected_writable(fp.destination):
            conn.select_dst(fp.destination, readonly=False)  # listed read-only (_appends_unseen): STOREs follow
        self._sync_flags(run, dst, dec.flag_updates)
        if opts.dry_run:
            adoptable = sum(1 for m in dec.to_copy if m.uid in pairs)
            stats.add(fp.source, planned=len(dec.to_copy) - adoptable,
                      planned_bytes=sum(m.size for m in dec.to_copy), found=adoptable)
            if opts.delete_extra:
                stats.add(fp.source, deleted_extra=len(run.extras) + len(run.pool))
            return None, None
        if first:
            stats.add(fp.source, planned=len(dec.to_copy), planned_bytes=sum(m.size for m in dec.to_copy))
        to_copy = self._adopt(run, dst, dec.to_copy, pairs)
        # Without UIDs, copies are found by content at the folder's end, and one session at a time
        # appends to a folder (imap4d loses messages APPENDed to one mbox by several at once).
        pieces = ([to_copy] if to_copy else []) if _appends_unseen(dst) else chunks(
            to_copy, opts.chunk_messages, max(opts.batch_bytes * 8, 1))
        run.pending_chunks = len(pieces)
        if len(pieces) == 1 and one_batch(pieces[0], opts.batch_bytes, opts.batch_count):
            return run, ChunkJob(run, pieces[0], opened=(s_st, listed[0]))
        for piece in pieces:
            self._put(ChunkJob(run, piece))
        return run, None

    def _waited_for_in_flight(self, fp: FolderPlan, dst: Store, dec) -> bool:
        """An APPEND sent just before a crash or a cut connection may be committed by the server
        after this listing: copying its message now would make two. So a march that finds intents
        left pending less than in_flight_grace seconds ago waits out the rest, and lists again."""
        if self.opts.dry_run or not dec.in_doubt or not dst.capabilities.late_commits:
            return False
        wait = max(r.updated for r in dec.in_doubt.values()) + self.opts.in_flight_grace - time.time()
        if wait <= 0:
            return False
        log.info("'%s': waiting %.1f s for APPENDs that may still be in flight", display(fp.source), wait)
        self.stop.wait(wait)
        return not self.stop.is_set()

    def _take_late_twins(self, run: FolderRun, dst: Store, rows: dict, dst_msgs: list[MessageMeta]):
        """Copies sent again for a pending intent (table resent) whose first APPEND was committed
        late after all: the copy sent again is removed (its UID came from APPENDUID: provably
        ours, provably redundant) and the row points at the late one, whose flags decide() then
        brings in step. Order, for a crash at any point: row first, then EXPUNGE, then the marker.
        Returns the rows and the destination listing as they are afterwards."""
        fp, ckpt = run.fp, self.ckpt
        markers = ckpt.resent(fp.destination, run.dst_uidvalidity)
        if not markers:
            return rows, dst_msgs
        present = {m.uid for m in dst_msgs}
        referenced = {r.dst_uid for r in rows.values() if r.dst_uid is not None}
        cands = late_twin_candidates(markers, dst_msgs, rows)
        digests: dict[int, str] = {}
        wanted = list({m.uid: m for ms in cands.values() for m in ms}.values())
        for batch in batches(wanted, self.opts.batch_bytes, self.opts.batch_count):
            digests.update((msg.meta.uid, sha256(msg.body)) for msg in dst.fetch([m.uid for m in batch]))
        rows, taken, remove, done = dict(rows), set(), [], []
        for e in markers:
            row = rows.get(e.src_uid)
            if e.dst_uid not in present:
                done.append(e.dst_uid)  # gone (expunged by someone, or by a run that died after it)
                continue
            if row is not None and row.dst_uid != e.dst_uid and e.dst_uid not in referenced:
                remove.append(e.dst_uid)  # re-pointed by a run that died before its EXPUNGE
                continue
            late = next((m for m in cands.get(e.dst_uid, ()) if digests.get(m.uid) == e.sha256 and m.uid not in taken), None)
            if late is None:
                if time.time() - e.sent > LATE_COMMIT_WINDOW:
                    done.append(e.dst_uid)
                continue
            taken.add(late.uid)
            if row is not None and row.dst_uid == e.dst_uid:
                rows[e.src_uid] = dataclasses.replace(row, dst_uid=late.uid, status=DONE)
                ckpt.record_done(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity,
                                 [(Intent(row.src_uid, row.size, e.sha256, row.flags), late.uid)])
            remove.append(e.dst_uid)
        if remove and not dst.capabilities.uidplus:
            # EXPUNGE without UIDPLUS removes every \Deleted message of the folder: not ours to do.
            self.stats.warn(f"'{display(fp.source)}': {len(remove)} message(s) an earlier run sent were "
                            "committed late and are now there twice; the server cannot expunge one "
                            "message alone (no UIDPLUS): remove the newer copies by hand")
            remove = []
        if remove:
            dst.expunge_uids(remove)
            crash("late-twin-removed")
            self.stats.warn(f"'{display(fp.source)}': {len(remove)} APPEND(s) of an earlier run were committed "
                            "late; the copies sent again were removed")
            done.extend(remove)
        ckpt.drop_resent(fp.destination, run.dst_uidvalidity, done)
        gone = set(remove)
        return rows, [m for m in dst_msgs if m.uid not in gone]

    def _copies_whole(self, fp: FolderPlan, known: FolderStatus | None) -> bool:
        """Whether the march can read the folder's bodies along with its listing: STATUS shows it
        fits in one batch, and the checkpoint has nothing of it (so all of it will be copied)."""
        opts = self.opts
        return (known is not None and known.size is not None and self.ckpt is not None and not opts.dry_run
                and 0 < known.messages <= opts.batch_count and known.size <= opts.batch_bytes
                and not self.ckpt.has_rows(fp.source, known.uidvalidity, fp.destination))

    def _exclude_merged(self, fp: FolderPlan, run: FolderRun, dec) -> None:
        """merge = true: messages another source folder copied here are not ours to adopt.

        Without this, two merged folders holding the same message would end with one
        copy (the second would adopt the first one's). Folders merged into one
        destination are therefore copied one after the other, in plan order (a folder
        waits while an earlier one still has work queued: no deadlock), and each leaves
        alone what the others' checkpoint rows point to. A copy left unconfirmed by a
        crash may still be adopted by another merged folder: the owner then copies its
        message again, so the count stays right.
        """
        group = [o.source for o in self.plan.copying() if o.destination == fp.destination]
        if len(group) < 2 or self.ckpt is None:
            return
        earlier = group[: group.index(fp.source)]
        if any(self._in_progress(o) for o in earlier):
            raise _WaitForMerged()  # march again when it is done; no attempt is used up
        claimed = self.ckpt.claims_of_others(fp.destination, run.dst_uidvalidity, fp.source, group)
        dec.unaccounted = [m for m in dec.unaccounted if m.uid not in claimed]

    def _fill_pool(self, run: FolderRun, dst: Store, candidates: list[MessageMeta]) -> None:
        """Fingerprint the destination messages that could match something still to copy."""
        by_uid = {m.uid: m for m in candidates}
        for batch in batches(candidates, self.opts.batch_bytes, self.opts.batch_count):
            for msg in dst.fetch([d.uid for d in batch]):
                run.pool.add(sha256(msg.body), by_uid[msg.meta.uid])

    def _verify_rows(self, run: FolderRun, dst: Store, rows) -> None:
        """Copies a run stored but stopped before reading back (a crash, a cut connection): their
        bytes are compared now, with the SHA-256 their intent recorded. The destination folder is
        the one the march just opened."""
        by_uid = {row.dst_uid: row for row in rows}
        for batch in batches(rows, self.opts.batch_bytes, self.opts.batch_count):
            same = []
            for msg in dst.fetch([row.dst_uid for row in batch]):
                row = by_uid[msg.meta.uid]
                intent = Intent(row.src_uid, row.size, row.sha256, row.flags)
                if sha256(msg.body) == row.sha256:
                    same.append((intent, row.dst_uid))
                else:
                    self._altered(run, intent, row.dst_uid, same_size_change(row.size), copied=False)
            self._confirm(run, same)

    def _pair_with_pool(self, run: FolderRun, src: Store, dst: Store, dec,
                        src_msgs: list[MessageMeta]) -> dict | None:
        """Source UID -> (destination message, fingerprint) for each message still to copy or claimed
        that an unaccounted destination message matches; fills the pool and run.extras on the way.

        Only messages of the same size can be identical, so each side is read only where the other
        may hold a match: the unaccounted destination messages of a size still to copy or claimed
        are fingerprinted (the pool), then the messages to copy of a size the pool holds. A source
        whose listed sizes are not those of the bytes it serves (Capabilities.exact_sizes; POP3)
        is read the other way round: its messages to copy first, all of them if the destination
        holds anything unaccounted (dec.to_copy then gets their sizes as served), then the
        destination messages of those sizes. Either way a first run into an empty destination
        reads nothing, nor does a rerun with nothing to copy; bodies are hashed as they come and
        dropped (_fingerprint_sources). Then each group of identical messages is paired as a whole
        (march.pair_twins): which twin adopts which copy is decided before any of them is adopted
        or copied. None if stopped meanwhile."""
        exact = src.capabilities.exact_sizes
        by_uid = {m.uid: m for m in src_msgs}
        claims = [Wanted(by_uid[row.src_uid], row.sha256, claim=True) for row in dec.claims]
        if exact:
            copies, sizes = [], {m.size for m in dec.to_copy}
        else:  # a listed size says nothing: the sizes are those of the bytes, read first
            copies = self._fingerprint_sources(src, dec.to_copy) if dec.unaccounted else []
            served = {w.meta.uid: w.meta for w in copies}
            dec.to_copy = [served.get(m.uid, m) for m in dec.to_copy]  # what follows sees the bytes' sizes
            sizes = {m.size for m in served.values()}
        candidates, rest = pool_candidates(dec.unaccounted, sizes | {row.size for row in dec.claims})
        run.extras = [m.uid for m in rest]
        self._fill_pool(run, dst, candidates)
        crash("pool-fetched")
        if exact and len(run.pool):
            copies = self._fingerprint_sources(src, [m for m in dec.to_copy if run.pool.might_hold(m.size)])
        if self.stop.is_set():
            return None
        digests = {w.meta.uid: w.digest for w in claims + copies}
        return {uid: (found, digests[uid]) for uid, found in run.pool.pair(claims + copies).items()}

    def _fingerprint_sources(self, src: Store, metas: list[MessageMeta]) -> list[Wanted]:
        """These source messages with their fingerprint, each body hashed as it comes and dropped;
        their metadata as served (_served)."""
        wanted = []
        for batch, fetched in self._prefetch(src, batches(metas, self.opts.batch_bytes, self.opts.batch_count)):
            crash("fetched")  # nothing adopted yet: the next march fingerprints them again
            wanted += [Wanted(_served(m, msg), sha256(msg.body)) for m in batch if (msg := fetched.get(m.uid))]
        return wanted

    def _settle_claims(self, run: FolderRun, claims, pairs: dict) -> None:
        """Copies confirmed without a UID (no UIDPLUS): record the UID their fingerprint found."""
        found = [(Intent(row.src_uid, row.size, row.sha256, row.flags), pairs[row.src_uid][0].uid)
                 for row in claims if row.src_uid in pairs]
        if found and self.ckpt and not self.opts.dry_run:
            self._confirm(run, found)

    def _match_altered(self, run: FolderRun, src: Store, dst: Store, dec, pairs: dict,
                       src_msgs: list[MessageMeta]) -> None:
        """After the exact pairing: destination messages left over may be copies a server altered
        (content.loose_form: Cyrus's munged 8-bit headers, a line end added, mbox fields added) that
        no row points to any more (the state was lost or reset), or copies a server gave no UID
        for. Each one found is recorded as an altered copy and reported, not copied again. A
        claim (a copy confirmed without a UID) found neither way is not on the destination: its
        row goes, and the message is copied again. Reads only messages whose sizes could match
        (content.loose_window), and only when something is left on both sides."""
        paired = {found.uid for found, _digest in pairs.values()}
        left = [m for m in dec.unaccounted if m.uid not in paired]
        claims = [row for row in dec.claims if row.src_uid not in pairs]
        wanted = {m.uid: m for m in dec.to_copy if m.uid not in pairs}
        src_by_uid = {m.uid: m for m in src_msgs}
        wanted.update({row.src_uid: src_by_uid[row.src_uid] for row in claims if row.src_uid in src_by_uid})
        if not left or not wanted:
            self._forget_claims(run, dec, claims, set(), src_by_uid)
            return
        sizes = sorted(m.size for m in wanted.values())
        cands = [m for m in left if _any_between(sizes, (m.size - 256) // 2, m.size + 64)]
        cand_sizes = sorted(m.size for m in cands)
        maybe = [m for m in wanted.values() if _any_between(cand_sizes, *loose_window(m.size))]
        held: dict[str, list[tuple[int, bytes]]] = {}
        if maybe:
            for batch in batches(cands, self.opts.batch_bytes, self.opts.batch_count):
                for msg in dst.fetch([m.uid for m in batch]):
                    held.setdefault(loose_digest(msg.body), []).append((msg.meta.uid, msg.body))
        found: set[int] = set()
        claimed = {row.src_uid for row in claims}
        for batch, fetched in (self._prefetch(src, batches(maybe, self.opts.batch_bytes, self.opts.batch_count))
                               if held else ()):
            for m in sorted(batch, key=lambda m: m.uid not in claimed):  # claims first: their copy is there
                msg = fetched.get(m.uid)
                hit = held.get(loose_digest(msg.body)) if msg is not None else None
                if not hit:
                    continue
                uid, stored = hit.pop(0)
                found.add(m.uid)
                intent = Intent(m.uid, len(msg.body), sha256(msg.body), copy_flags(m, self.opts.include_deleted))
                self._altered(run, intent, uid, describe_change(Shape.of(msg.body), stored), copied=False)
                run.pool.discard(uid)
                run.extras = [u for u in run.extras if u != uid]
        dec.to_copy = [m for m in dec.to_copy if m.uid not in found]
        self._forget_claims(run, dec, claims, found, src_by_uid)

    def _forget_claims(self, run: FolderRun, dec, claims: list, found: set[int], src_by_uid: dict) -> None:
        """Claims whose copy is not on the destination: the row must not outlive the message."""
        lost = [row for row in claims if row.src_uid not in found]
        if not lost:
            return
        self.ckpt.forget(run.fp.source, run.src_uidvalidity, run.fp.destination, [row.src_uid for row in lost])
        dec.to_copy += [src_by_uid[row.src_uid] for row in lost if row.src_uid in src_by_uid]
        dec.already -= len(lost)

    def _adopt(self, run: FolderRun, dst: Store, to_copy: list[MessageMeta], pairs: dict) -> list[MessageMeta]:
        """Record each paired message as copied to its destination message, with the source's
        flags set there; returns the messages left to copy."""
        opts, fp = self.opts, run.fp
        adopting = [m for m in to_copy if m.uid in pairs]
        for start in range(0, len(adopting), opts.batch_count):
            adopted = []
            for m in adopting[start:start + opts.batch_count]:
                found, digest = pairs[m.uid]
                flags = copy_flags(m, opts.include_deleted)
                if opts.sync_flags and set(found.flags) != set(flags):
                    dst.set_flags(found.uid, sorted(set(flags) - set(found.flags)),
                                  sorted(set(found.flags) - set(flags)))
                    self.stats.add(fp.source, flags_updated=1)
                # Its size as the destination lists it: the next march compares the two.
                adopted.append((Intent(m.uid, found.size, digest, flags), found.uid))
            self._confirm(run, adopted)
            crash("adopted")
            self.stats.add(fp.source, found=len(adopted))
            run.count(found=len(adopted))
        return [m for m in to_copy if m.uid not in pairs]

    def _sync_flags(self, run: FolderRun, dst: Store, updates: list[tuple[MessageMeta, MessageMeta]]) -> None:
        if not updates:
            return
        fp = run.fp
        if self.opts.dry_run:
            self.stats.add(fp.source, flags_updated=len(updates))
            return
        done = []
        for src_meta, dst_meta in updates:
            want = set(copy_flags(src_meta, self.opts.include_deleted))
            have = set(dst_meta.flags)
            dst.set_flags(dst_meta.uid, sorted(want - have), sorted(have - want))
            crash("flags-set")
            done.append((src_meta.uid, tuple(sorted(want))))
        if self.ckpt:
            self.ckpt.update_flags(fp.source, run.src_uidvalidity, fp.destination, done)
        self.stats.add(fp.source, flags_updated=len(done))

    # -- chunks: copy -----------------------------------------------------------------------------

    def _run_chunk(self, job: ChunkJob, conn: Connections) -> None:
        run = job.run
        try:
            if run.transient is None and not run.failed:
                self._copy_chunk(run, job.metas, conn, job.opened)
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            if self.opts.throttle:
                self.opts.throttle.backoff(str(e))  # [THROTTLED]/[LIMIT]: slow every worker down
            with run.lock:
                run.transient = run.transient or str(e)
        except FolderError as e:
            self.stats.folder_failed(run.fp.source, str(e))
            with run.lock:
                run.failed = True  # not transient: the folder is given up, not retried
        finally:
            with run.lock:
                run.pending_chunks -= 1
                last = run.pending_chunks == 0
        if not last or self.stop.is_set() or run.failed:
            return
        if run.transient is None:
            # Copied at once by the march's worker: every APPEND went through this connection.
            self._end_folder(run, conn, own_appends=job.opened is not None)
        else:
            self._retry_folder(run.fp, run.attempt, run.transient)

    def _copy_chunk(self, run: FolderRun, metas: list[MessageMeta], conn: Connections,
                    opened: tuple[FolderStatus, FolderStatus] | None = None) -> None:
        """opened: the folders' SELECT answers, when this worker's march has just opened them
        (read-write on the destination) on these connections."""
        fp, opts, stats = run.fp, self.opts, self.stats
        src, dst = conn.both()
        # Read-write on the destination: the folder's size check (_check_sizes) then needs no SELECT.
        # Read-only where copies get no UID (_appends_unseen): imap4d rewrites a folder that was
        # empty when SELECTed from that session's view when it is left, losing what was appended.
        s_st, d_st = opened or self._both_sides(lambda: conn.select_src(fp.source),
                                                lambda: conn.select_dst(fp.destination, readonly=_appends_unseen(dst)))
        if s_st.uidvalidity != run.src_uidvalidity:
            raise TransientError(f"UIDVALIDITY of source folder '{display(fp.source)}' changed during the run")
        if d_st.uidvalidity != run.dst_uidvalidity:
            raise TransientError(f"UIDVALIDITY of destination folder '{display(fp.destination)}' changed during the run")
        for batch, fetched in self._prefetch(src, batches(metas, opts.batch_bytes, opts.batch_count)):
            crash("fetched")
            vanished = sum(1 for m in batch if m.uid not in fetched)
            stats.skip(fp.source, "expunged from the source during the run", vanished)
            intents: list[Intent] = []
            items: list[AppendItem] = []
            for m in batch:
                msg = fetched.get(m.uid)
                if msg is None:
                    continue
                if msg.note:
                    stats.warn(f"'{display(fp.source)}' UID {m.uid}: {msg.note}")
                flags = copy_flags(m, opts.include_deleted)
                # What the pool holds was adopted by the march (_adopt): everything here is copied.
                # No fingerprint (SHA-256 was a sixth of migrator's CPU), unless the destination
                # gives no UID for the copy: then _append takes one before confirming it.
                m = _served(m, msg)  # the date a POP3 listing leaves out
                intents.append(Intent(m.uid, m.size, "", flags))
                items.append(AppendItem(msg.body, flags, m.internaldate, nul_free=msg.nul_free))
            del fetched
            if items:
                self._append(run, dst, intents, items)

    def _prefetch(self, src: Store, pieces) -> Iterator[tuple[list[MessageMeta], dict]]:
        """Yield (batch, {uid: Message}) while a helper thread already FETCHes the next batch.

        The source and destination then work at the same time instead of taking turns
        (the round trip of each FETCH is hidden behind an APPEND). At most two batches
        are in memory per worker: the one being appended and the one prefetched.
        """
        out: queue.Queue = queue.Queue(maxsize=1)
        done = threading.Event()
        opts = self.opts

        def produce() -> None:
            try:
                for batch in pieces:
                    if self.stop.is_set() or done.is_set():
                        break
                    if opts.throttle and not opts.throttle.acquire(len(batch), sum(m.size for m in batch), self.stop):
                        break
                    fetched = {msg.meta.uid: msg for msg in src.fetch([m.uid for m in batch])}
                    while not done.is_set():
                        try:
                            out.put((batch, fetched, None), timeout=0.2)
                            break
                        except queue.Full:
                            continue
            except BaseException as e:  # handed to the consumer, which owns error handling
                out.put((None, None, e))
            finally:
                out.put(None)

        producer = threading.Thread(target=produce, name=threading.current_thread().name + "-fetch", daemon=True)
        producer.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                batch, fetched, error = item
                if error is not None:
                    raise error
                if self.stop.is_set():
                    return
                yield batch, fetched
        finally:
            done.set()
            while producer.is_alive():  # unblock a producer waiting to put, then let it finish
                try:
                    out.get(timeout=0.2)
                except queue.Empty:
                    pass

    def _confirm(self, run: FolderRun, results: list[tuple[Intent, int | None]], status: str = DONE,
                 reason: str | None = None) -> None:
        if self.ckpt:
            self.ckpt.record_done(run.fp.source, run.src_uidvalidity, run.fp.destination, run.dst_uidvalidity,
                                  results, status, reason)

    def _append(self, run: FolderRun, dst: Store, intents: list[Intent], items: list[AppendItem]) -> None:
        fp = run.fp
        intents, shapes = self._to_read_back(run, intents, items)
        if self.ckpt:
            self.ckpt.record_intents(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity, intents)
        crash("intent-written")
        try:
            uids = dst.append(fp.destination, items)
        except MessageRejected as e:
            if len(items) == 1:
                self._reject(run, intents[0], str(e))
                return
            # A MULTIAPPEND is all or nothing (RFC 3502): find the bad one(s) one by one.
            for intent, item in zip(intents, items):
                self._append(run, dst, [intent], [item])
            return
        crash("append-sent")  # stored on the server, not yet confirmed: settled by the next march
        with run.lock:
            run.appended.extend(u for u in uids if u is not None)
            run.unknown_uids = run.unknown_uids or None in uids
        # Without a destination UID (no UIDPLUS) a copy is found again by its fingerprint only.
        intents = [i if uid is not None or i.sha256 else dataclasses.replace(i, sha256=sha256(item.body))
                   for i, item, uid in zip(intents, items, uids)]
        results = list(zip(intents, uids))
        if None in uids:  # no UID: found by content at the folder's end (_find_claims)
            with run.lock:
                run.claimed.extend((i, Shape.of(item.body), loose_digest(item.body))
                                   for i, item, uid in zip(intents, items, uids) if uid is None)
        if run.in_doubt and self.ckpt:
            self.ckpt.record_resent(fp.destination, run.dst_uidvalidity, [
                Resent(uid, i.src_uid, i.size, i.sha256, run.dst_uidnext, run.in_doubt[i.src_uid].updated)
                for i, uid in results if uid is not None and i.src_uid in run.in_doubt])
        # A copy to read back stays 'unverified' until its bytes are compared (_read_back); a
        # crash before that leaves it for the next march to compare (march.decide: to_verify).
        later = [(i, uid) for n, (i, uid) in enumerate(results) if n in shapes and uid is not None]
        self._confirm(run, [(i, uid) for n, (i, uid) in enumerate(results) if not (n in shapes and uid is not None)])
        self._confirm(run, later, UNVERIFIED)
        crash("confirmed")
        if self.opts.check_size:
            with run.lock:  # sizes are checked once per folder, at its end (_check_sizes)
                run.unchecked.extend((intent, uid) for intent, uid in results if uid is not None)
                run.read_back.extend((i, uid, shapes[n]) for n, (i, uid) in enumerate(results)
                                     if n in shapes and uid is not None)
        self.stats.add(fp.source, copied=len(results), copied_bytes=sum(i.size for i in intents))
        run.count(copied=len(results))

    def _to_read_back(self, run: FolderRun, intents: list[Intent],
                      items: list[AppendItem]) -> tuple[list[Intent], dict[int, Shape]]:
        """Which of these copies are read back at the folder's end (engine/content.py): those whose
        bytes are at risk, and the run's first copy (a sample: once per run, as a read-back costs
        the folder's end its ride with the next SELECT, a round trip). Their SHA-256 is taken now
        (it goes into the intent) and their Shape kept, to say what changed without the bytes."""
        shapes: dict[int, Shape] = {}
        out = list(intents)
        if self.opts.check_size:
            with self._sample_lock:
                sample, self._sampled = not self._sampled, True
            for n, (intent, item) in enumerate(zip(intents, items)):
                if (n == 0 and sample) or at_risk(item.body, item.nul_free):
                    shapes[n] = Shape.of(item.body)
        for n, (intent, item) in enumerate(zip(intents, items)):
            # A message sent again for a pending intent is watched for a late twin (_take_late_twins).
            if not intent.sha256 and (n in shapes or intent.src_uid in run.in_doubt):
                out[n] = dataclasses.replace(intent, sha256=sha256(item.body))
        return out, shapes

    def _read_back_inline(self, entries: list) -> bool:
        """Whether the copies to read back can ride with the folder's size check (and so with the
        next folder's SELECT): one batch's worth, and none holding NUL (read through fetch(),
        which asks a server's BINARY form where BODY[] cannot carry NUL)."""
        return (len(entries) <= self.opts.batch_count and sum(i.size for i, _u, _s in entries) <= self.opts.batch_bytes
                and not any(shape.nul for _i, _u, shape in entries))

    def _compare(self, run: FolderRun, entries: list, bodies: dict[int, bytes], altered: set[int]) -> None:
        """Each copy read back against the SHA-256 of what was sent. A copy not in `bodies` (not in
        this session's view, or expunged) stays unverified: the next march compares it."""
        same = []
        for intent, uid, shape in entries:
            body = bodies.get(uid)
            if uid in altered or body is None:
                continue
            if sha256(body) == intent.sha256:
                same.append((intent, uid))
            else:
                self._altered(run, intent, uid, describe_change(shape, body))
        self._confirm(run, same)

    def _read_back(self, run: FolderRun, conn: Connections, entries: list, altered: set[int]) -> None:
        """_compare for copies too many or too big to ride with the size check: read in batches
        (memory stays bounded) while the folder is still selected on conn."""
        for batch in batches(entries, self.opts.batch_bytes, self.opts.batch_count, size=lambda e: e[0].size):
            bodies = {msg.meta.uid: msg.body for msg in conn.dst().fetch([uid for _i, uid, _s in batch])}
            self._compare(run, batch, bodies, altered)

    def _altered(self, run: FolderRun, intent: Intent, uid: int, reason: str, copied: bool = True) -> None:
        """A copy the destination stores with other bytes: reported, and recorded so that no rerun
        copies it again. copied: it was counted as copied by this run (it no longer is)."""
        self._confirm(run, [(intent, uid)], ALTERED, reason)
        self._fail(run, intent, reason, copied)

    def _fail(self, run: FolderRun, intent: Intent, reason: str, copied: bool = False) -> None:
        """A message of the folder failed: reported, and counted by the run (then no watermark).
        copied: it was counted as copied by this run (it no longer is)."""
        self.stats.fail(run.fp.source, intent.src_uid, reason)
        run.count(failed=1, copied=-int(copied))
        if copied:
            self.stats.add(run.fp.source, copied=-1, copied_bytes=-intent.size)

    def _check_sizes(self, run: FolderRun, conn: Connections, with_status: bool) -> FolderStatus | None:
        """Ask the destination how big each new message is: a server that rewrites bytes is caught here.
        with_status: the folder's STATUS (for the watermark) is asked in the same round trip.

        Done once per folder, not per batch (a round trip saved on every batch). A crash
        before this check is covered too: the next march compares every recorded size with
        the destination's RFC822.SIZE (march.decide).
        """
        by_uid = run.take_unchecked()
        entries = run.take_read_back()
        if not by_uid and not with_status:
            return None
        folder, uids = run.fp.destination, sorted(by_uid)
        if uids and not conn.dst_selected_writable(folder):
            conn.select_dst(folder, readonly=False)
        inline = self._read_back_inline(entries)
        checked = calls.list_with_status(conn.dst(), folder, uids, [uid for _i, uid, _s in entries] if inline else ())
        metas = checked.metas
        if len(metas) < len(uids):
            # Messages another worker appended are not in this session's view yet (and a NOOP
            # did not bring them): a fresh SELECT shows them all.
            conn.select_dst(folder, readonly=False)
            metas = conn.dst().list_messages(uids)
            inline = False  # the bodies are read again in this view
        altered = self._record_sizes(run, by_uid, metas)
        if inline:
            self._compare(run, entries, checked.bodies, altered)
        elif entries:
            self._read_back(run, conn, entries, altered)
        return checked.status if with_status else None

    def _record_sizes(self, run: FolderRun, by_uid: dict, metas: list[MessageMeta]) -> set[int]:
        """A copy whose stored size differs from the source's was altered by the server: reported.
        Returns their destination UIDs."""
        altered = set()
        for meta in metas:
            intent = by_uid[meta.uid]
            if meta.size != intent.size:
                self._altered(run, intent, meta.uid, altered_reason(intent.size, meta.size))
                altered.add(meta.uid)
        return altered

    def _reject(self, run: FolderRun, intent: Intent, reason: str) -> None:
        fp = run.fp
        text = f"rejected by the destination: {reason}"
        if self.ckpt:
            self.ckpt.record_failed(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity, intent, text)
        self._fail(run, intent, text)
        if "OVERQUOTA" in reason.upper():
            self.stats.warn(OVERQUOTA_HINT)

    # -- end of a folder ----------------------------------------------------------------------------

    def _end_folder(self, run: FolderRun, conn: Connections, own_appends: bool) -> None:
        """All chunks done. The folder's end (its size check and STATUS, _finish_folder) is left on
        this worker's connection, to go with the next folder's SELECT (_end_and_open): on a WAN a
        round trip less per folder, a third of a small folder's time. Deferred only when that
        round trip can carry it: no mirror EXPUNGE, and every new message of the folder appended
        through this connection, with the folder still selected here (then a NOOP shows them all).
        Counted as outstanding work until sent, so the run does not end before it."""
        with run.lock:
            unchecked = bool(run.unchecked)
            big_read_back = not self._read_back_inline(run.read_back)  # read in batches, in this folder
            claimed = bool(run.claimed)  # found by content in this folder (_find_claims)
        if (self.opts.delete_extra or self.stop.is_set() or big_read_back or claimed
                or not (unchecked or self._may_keep_watermark(run))
                or (unchecked and not (own_appends and conn.dst_selected_writable(run.fp.destination)))):
            self._finish_folder(run, conn)
            return
        self._hold(run.fp.source)
        conn.deferred = run
        crash("end-deferred")  # copied and confirmed, sizes not checked yet: the next march checks them

    def _finish_deferred(self, conn: Connections) -> None:
        run = conn.take_deferred()
        try:
            self._finish_folder(run, conn)
        except Exception as e:  # as the worker loop does for a job: reported, and the run goes on
            self._internal_error(run.fp, e)
        finally:
            self._release(run.fp.source)

    def _internal_error(self, fp: FolderPlan, e: Exception) -> None:
        log.exception("unexpected error")
        self.stats.folder_failed(fp.source, f"internal error: {type(e).__name__}: {e}")

    def _end_and_open(self, ended: FolderRun, conn: Connections, folder: Folder, readonly: bool,
                      expect: int | None):
        """_finish_folder(ended) and the SELECT + listing of `folder`, in one round trip on the
        destination. Runs as the march's destination side: a lost connection retries `ended` here
        and is raised for the march to retry its own folder; anything else that goes wrong with
        `ended` is reported on it, not on the next folder."""
        fp = ended.fp
        try:
            by_uid = ended.take_unchecked()
            entries = ended.take_read_back()  # one batch's worth: _end_folder deferred it
            keep = self._may_keep_watermark(ended)
            try:
                checked, opened = conn.check_then_open(fp.destination, sorted(by_uid), folder, readonly, expect,
                                                       [uid for _i, uid, _s in entries])
            except (TransientError, ConnectionFailed) as e:
                self._retry_folder(fp, ended.attempt, str(e))
                raise
            except Exception as e:
                self._internal_error(fp, e)
                raise
            try:
                if checked.refused:
                    self.stats.folder_failed(fp.source, checked.refused)
                else:
                    self._compare(ended, entries, checked.bodies, self._record_sizes(ended, by_uid, checked.metas))
                    # A copy not in the answer (expunged meanwhile?) is left unchecked: then no
                    # watermark, and the next run's march compares its size.
                    if keep and checked.status is not None and len(checked.metas) == len(by_uid):
                        self._store_watermark(ended, conn, checked.status)
            except Exception as e:  # a bug, or the state file failing (disk full)
                self._internal_error(fp, e)
        finally:
            self._release(fp.source)
        if isinstance(opened, FolderError):
            raise opened  # the next folder's: its march reports it
        return opened

    def _finish_folder(self, run: FolderRun, conn: Connections) -> None:
        """All chunks done: mirror mode removes what matches nothing; then the watermark is stored."""
        try:
            self._find_claims(run, conn)
            leftovers = sorted(run.extras + run.pool.leftovers()) if self.opts.delete_extra else []
            # The watermark's STATUS rides along with the size check, unless an EXPUNGE comes between.
            status = self._check_sizes(run, conn, with_status=not leftovers and self._may_keep_watermark(run))
            if leftovers:
                conn.select_dst(run.fp.destination, readonly=False)
                conn.dst().expunge_uids(leftovers)
                crash("expunged")
                run.expunged += len(leftovers)
                self.stats.add(run.fp.source, deleted_extra=len(leftovers))
            self._store_watermark(run, conn, status)
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            self._retry_folder(run.fp, run.attempt, str(e))
        except FolderError as e:
            self.stats.folder_failed(run.fp.source, str(e))

    def _find_claims(self, run: FolderRun, conn: Connections) -> None:
        """'Copied' means present: copies the destination gave no UID for are looked for among the
        messages that arrived since the march listed the folder, in a fresh read-only view. Each is
        found by its SHA-256 (identical), or by its loose form (content.loose_form: stored altered,
        reported with what changed); a copy found neither way was acknowledged but is not held:
        a failure with that reason, and the next run does not count it as copied."""
        claims = run.take_claimed()
        if not claims or self.ckpt is None:
            return
        fp, dst = run.fp, conn.dst()
        st = conn.select_dst(fp.destination, readonly=True)
        if st.uidvalidity != run.dst_uidvalidity and run.dst_messages == 0:
            # A folder empty when listed may get its UIDVALIDITY with its first message (imap4d
            # keeps it in the first message of an mbox): the copies are recorded under the new one.
            run.dst_uidvalidity = st.uidvalidity
        known = {r.dst_uid for r in self.ckpt.rows(fp.source, run.src_uidvalidity, fp.destination).values()
                 if r.dst_uid is not None}
        arrived = [m for m in dst.list_messages() if m.uid >= run.dst_uidnext and m.uid not in known]
        exact: dict[str, list[int]] = {}
        loose: dict[str, list[tuple[int, bytes]]] = {}
        for batch in batches(arrived, self.opts.batch_bytes, self.opts.batch_count):
            for msg in dst.fetch([m.uid for m in batch]):
                exact.setdefault(sha256(msg.body), []).append(msg.meta.uid)
                loose.setdefault(loose_digest(msg.body), []).append((msg.meta.uid, msg.body))
        taken: set[int] = set()
        found, rest = [], []
        for intent, shape, loosely in claims:
            uid = next((u for u in exact.get(intent.sha256, ()) if u not in taken), None)
            if uid is None:
                rest.append((intent, shape, loosely))
            else:
                taken.add(uid)
                found.append((intent, uid))
        self._confirm(run, found)
        for intent, shape, loosely in rest:
            hit = next(((u, b) for u, b in loose.get(loosely, ()) if u not in taken), None)
            if hit is not None:
                taken.add(hit[0])
                self._altered(run, intent, hit[0], describe_change(shape, hit[1]))
                continue
            reason = "the destination answered OK to the APPEND but does not hold the message"
            self.ckpt.record_failed(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity, intent, reason)
            self._fail(run, intent, reason, copied=True)

    def _may_keep_watermark(self, run: FolderRun) -> bool:
        s = run.src_status
        if self.ckpt is None or self.opts.dry_run or self.stop.is_set() or s is None or s.highestmodseq is None:
            return False
        # failed messages must be reported again by the next run's march
        return not run.tally.failed and not run.unknown_uids and run.dst_consistent

    def _store_watermark(self, run: FolderRun, conn: Connections, d: FolderStatus | None = None) -> None:
        """Remember both sides' STATUS, but only if the destination holds exactly what this run made of it.
        d: the destination's STATUS if already asked, after the last change this run made there.

        Expected: the listed messages + our APPENDs - our expunges, and UIDNEXT just past our last
        APPENDUID. Anything else means someone else wrote there meanwhile: no watermark, next run marches.
        """
        if not self._may_keep_watermark(run):
            return
        fp, s, tally = run.fp, run.src_status, run.tally
        d = d or conn.dst().status(fp.destination)
        expected_next = max([run.dst_uidnext] + [u + 1 for u in run.appended])
        if (d.highestmodseq is None or d.uidvalidity != run.dst_uidvalidity or d.uidnext != expected_next
                or d.messages != run.dst_messages + len(run.appended) - run.expunged):
            return
        self.ckpt.set_watermark(fp.source, fp.destination, Watermark(
            self.opts.key(), s.uidvalidity, s.uidnext, s.messages, s.highestmodseq,
            d.uidvalidity, d.uidnext, d.messages, d.highestmodseq,
            settled=tally.settled, skipped_deleted=tally.skipped_deleted,
        ))


class _WaitForMerged(Exception):
    """Another source folder merged into the same destination still has APPENDs in flight."""


def _matches(wm: Watermark, s, d) -> bool:
    """Both sides' STATUS equal to the watermark's. Without CONDSTORE (no HIGHESTMODSEQ) a flag
    change leaves STATUS unchanged, so such a folder never counts as unchanged."""
    if s.highestmodseq is None or d.highestmodseq is None:
        return False
    return ((s.uidvalidity, s.uidnext, s.messages, s.highestmodseq)
            == (wm.src_uidvalidity, wm.src_uidnext, wm.src_messages, wm.src_modseq)
            and (d.uidvalidity, d.uidnext, d.messages, d.highestmodseq)
            == (wm.dst_uidvalidity, wm.dst_uidnext, wm.dst_messages, wm.dst_modseq))


def _any_between(sorted_sizes: list[int], low: int, high: int) -> bool:
    i = bisect.bisect_left(sorted_sizes, low)
    return i < len(sorted_sizes) and sorted_sizes[i] <= high


def _appends_unseen(dst: Store) -> bool:
    """Whether the destination gives no UID for an APPEND (no UIDPLUS): its copies are then found
    by content, the folder is listed read-only and appended to by one session at a time."""
    return not dst.capabilities.uidplus


def _served(m: MessageMeta, msg: Message) -> MessageMeta:
    """A listed message with what only its fetched bytes tell: their size (a listed size may be an
    estimate: Capabilities.exact_sizes), and the date a listing may leave out (POP3: read from the
    headers by fetch())."""
    return dataclasses.replace(m, size=len(msg.body), internaldate=m.internaldate or msg.meta.internaldate)


def _source(job) -> Folder:
    return job.fp.source if isinstance(job, MarchJob) else job.run.fp.source
