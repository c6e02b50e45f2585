"""The copy engine: one engine for every pair of stores.

Per folder, a *march* compares source, destination and checkpoint and decides
what to do (like rclone's march + mbsync's sync.c):
  - source messages the checkpoint says were copied, whose copy is still on the
    destination: nothing to copy; flags brought in step;
  - destination messages the checkpoint cannot account for (a crash between
    APPEND and its confirmation, a lost state file, a UIDVALIDITY reset, a
    non-empty destination) form a *pool*, keyed by SHA-256 of their bytes;
  - every other source message is copied, unless an identical message is still
    in the pool: then that one is adopted instead (multiset matching, so two
    identical source messages need two identical destination messages).
The march's copy list is cut into chunks that any worker may take, so a big
folder is copied by several connections at once.

Safety: the intent (source UID + SHA-256) is committed to the checkpoint before
each APPEND and confirmed after it. Any transient failure makes the folder be
marched again, which settles pending intents by looking at the destination.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from migrator.checkpoint import ALTERED, DONE, FAILED, Checkpoint, Intent
from migrator.engine.batching import batches, chunks
from migrator.errors import ConnectionFailed, FolderError, MessageRejected, TransientError
from migrator.naming import Folder, display, parents
from migrator.plan import FolderPlan, Plan
from migrator.stats import Stats
from migrator.stores.base import AppendItem, MessageMeta, Store

log = logging.getLogger("migrator.engine")


@dataclass
class EngineOptions:
    workers: int = 4
    batch_bytes: int = 8 * 1024 * 1024  # per FETCH / APPEND batch: bounds memory per worker
    batch_count: int = 100
    chunk_messages: int = 1000  # a folder is split into chunks this big for parallel workers
    include_deleted: bool = False
    sync_flags: bool = True
    delete_extra: bool = False
    dry_run: bool = False
    retry_failed: bool = False
    max_attempts: int = 6  # per folder, for transient errors
    backoff_base: float = 0.5  # seconds; doubled per attempt, with jitter, capped at backoff_max
    backoff_max: float = 30.0
    check_size: bool = True


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def copy_flags(meta: MessageMeta, include_deleted: bool) -> tuple[str, ...]:
    return meta.flags if include_deleted else tuple(f for f in meta.flags if f != "\\Deleted")


# -- work items ------------------------------------------------------------------------------


@dataclass
class FolderRun:
    """Shared by the chunks of one folder while they are copied."""

    fp: FolderPlan
    attempt: int
    src_uidvalidity: int = 0
    dst_uidvalidity: int = 0
    pool: dict[str, list[int]] = field(default_factory=dict)  # sha256 -> unaccounted destination UIDs
    extras: list[int] = field(default_factory=list)  # unaccounted destination UIDs not in the pool
    pending_chunks: int = 0
    transient: str | None = None  # set by the first chunk that hit a transient error
    failed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, digest: str) -> int | None:
        with self.lock:
            uids = self.pool.get(digest)
            return uids.pop() if uids else None


@dataclass
class MarchJob:
    fp: FolderPlan
    attempt: int = 1
    not_before: float = 0.0


@dataclass
class ChunkJob:
    run: FolderRun
    metas: list[MessageMeta]


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
    ):
        self.plan = plan
        self.open_src = open_src
        self.open_dst = open_dst
        self.ckpt = checkpoint
        self.opts = opts
        self.stats = stats or Stats()
        self.stop = stop or threading.Event()
        self.would_create: list[Folder] = []
        self._q: queue.Queue = queue.Queue()
        self._outstanding = 0
        self._outstanding_lock = threading.Lock()

    # -- top level -----------------------------------------------------------------------

    def run(self) -> Stats:
        folders = self.plan.copying()
        src, dst = self.open_src(), self.open_dst()
        try:
            self._prepare_destination(src, dst, folders)
        finally:
            src.close()
            dst.close()
        for fp in folders:
            self._put(MarchJob(fp))
        threads = [
            threading.Thread(target=self._worker, name=f"worker-{i}", daemon=True)
            for i in range(max(1, self.opts.workers))
        ]
        for t in threads:
            t.start()
        try:
            while self._outstanding_count() and not self.stop.is_set():
                time.sleep(0.05)
        except KeyboardInterrupt:
            self.stop.set()
        if self.stop.is_set():
            self.stats.interrupted = True
        for _ in threads:
            self._q.put(None)
        for t in threads:
            while t.is_alive():
                t.join(0.2)
        self.stats.finish()
        return self.stats

    def _prepare_destination(self, src: Store, dst: Store, folders: list[FolderPlan]) -> None:
        """Create missing destination folders (empty ones too) and copy subscriptions."""
        existing = {f.name for f in dst.list_folders()}
        src_subscribed = {f.name for f in src.list_folders() if f.subscribed}
        for fp in folders:
            if fp.destination in existing:
                continue
            if self.opts.dry_run:
                self.would_create.append(fp.destination)
                existing.add(fp.destination)
                continue
            try:
                dst.create_folder(fp.destination)
            except FolderError as e:
                self.stats.folder_failed(fp.source, str(e))
                fp.action = "failed"
                continue
            existing.add(fp.destination)
            existing.update(parents(fp.destination))
            self.stats.mark_created(fp.destination)
            if fp.source in src_subscribed or fp.subscribed:
                try:
                    dst.subscribe(fp.destination)
                except FolderError as e:
                    self.stats.warn(f"cannot subscribe '{display(fp.destination)}': {e}")

    # -- queue bookkeeping ----------------------------------------------------------------

    def _put(self, job) -> None:
        with self._outstanding_lock:
            self._outstanding += 1
        self._q.put(job)

    def _done(self) -> None:
        with self._outstanding_lock:
            self._outstanding -= 1

    def _outstanding_count(self) -> int:
        with self._outstanding_lock:
            return self._outstanding

    def _backoff(self, attempt: int) -> float:
        delay = min(self.opts.backoff_max, self.opts.backoff_base * (2 ** (attempt - 1)))
        return delay * (0.5 + random.random() / 2)

    # -- workers ---------------------------------------------------------------------------

    def _worker(self) -> None:
        conn = _Connections(self.open_src, self.open_dst)
        try:
            while True:
                job = self._q.get()
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
                    log.exception("unexpected error")
                    fp = job.fp if isinstance(job, MarchJob) else job.run.fp
                    self.stats.folder_failed(fp.source, f"internal error: {type(e).__name__}: {e}")
                finally:
                    self._done()
        finally:
            conn.close()

    def _retry_folder(self, fp: FolderPlan, attempt: int, reason: str) -> None:
        if attempt >= self.opts.max_attempts:
            self.stats.folder_failed(
                fp.source, f"gave up after {attempt} attempts: {reason} (rerun to resume)"
            )
            return
        self.stats.warn(f"'{display(fp.source)}': {reason}; retrying")
        self._put(MarchJob(fp, attempt + 1, time.monotonic() + self._backoff(attempt)))

    # -- march: decide what one folder needs ----------------------------------------------------

    def _run_march(self, job: MarchJob, conn: "_Connections") -> None:
        fp = job.fp
        try:
            run = self._march(fp, job.attempt, conn)
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            self._retry_folder(fp, job.attempt, str(e))
            return
        except FolderError as e:
            self.stats.folder_failed(fp.source, str(e))
            return
        if run is None:
            return
        if not self.opts.dry_run and run.pending_chunks == 0:
            self._finish_folder(run, conn)

    def _march(self, fp: FolderPlan, attempt: int, conn: "_Connections") -> FolderRun | None:
        opts, stats = self.opts, self.stats
        src, dst = conn.src(), conn.dst()
        s_st = src.select(fp.source, readonly=True)
        if fp.uidvalidity and s_st.uidvalidity != fp.uidvalidity and attempt == 1:
            stats.warn(
                f"source folder '{display(fp.source)}' has a new UIDVALIDITY since it was planned "
                f"({fp.uidvalidity} -> {s_st.uidvalidity}); its messages are matched by content"
            )
        src_msgs = src.list_messages()
        if opts.dry_run and fp.destination in self.would_create:
            dst_msgs, d_uidvalidity = [], 0
        else:
            d_st = dst.select(fp.destination, readonly=opts.dry_run)
            d_uidvalidity = d_st.uidvalidity
            dst_msgs = dst.list_messages()
        run = FolderRun(fp, attempt, s_st.uidvalidity, d_uidvalidity)
        rows = self.ckpt.rows(fp.source, s_st.uidvalidity, fp.destination) if self.ckpt else {}
        dst_by_uid = {m.uid: m for m in dst_msgs}
        accounted: set[int] = set()
        to_copy: list[MessageMeta] = []
        flag_updates: list[tuple[MessageMeta, MessageMeta]] = []
        already = 0
        deleted_skipped = 0
        for m in src_msgs:
            if m.deleted and not opts.include_deleted:
                deleted_skipped += 1
                continue
            row = rows.get(m.uid)
            if row is not None and row.dst_uidvalidity == d_uidvalidity:
                if row.status in (DONE, ALTERED) and (row.dst_uid is None or row.dst_uid in dst_by_uid):
                    if row.dst_uid is not None:
                        accounted.add(row.dst_uid)
                        want = copy_flags(m, opts.include_deleted)
                        have = dst_by_uid[row.dst_uid]
                        if opts.sync_flags and set(want) != set(have.flags):
                            flag_updates.append((m, have))
                    already += 1
                    if row.status == ALTERED:
                        stats.fail(fp.source, m.uid, row.reason or "altered by the destination")
                    continue
                if row.status == FAILED and not opts.retry_failed:
                    stats.fail(fp.source, m.uid, f"{row.reason} (failed in an earlier run; --retry-failed tries again)")
                    continue
            to_copy.append(m)
        if attempt == 1:
            stats.skip(fp.source, "flagged \\Deleted on the source (--include-deleted copies them)", deleted_skipped)
            stats.add(fp.source, already=already)
        unaccounted = [d for d in dst_msgs if d.uid not in accounted]
        if to_copy and unaccounted:
            self._fill_pool(run, dst, to_copy, unaccounted)
        else:
            run.extras = [d.uid for d in unaccounted]
        self._sync_flags(run, dst, flag_updates)
        planned_bytes = sum(m.size for m in to_copy)
        if attempt == 1:
            stats.add(fp.source, planned=len(to_copy), planned_bytes=planned_bytes)
        if opts.dry_run:
            found = sum(len(v) for v in run.pool.values())
            stats.add(fp.source, copied=0)
            if opts.delete_extra:
                stats.add(fp.source, deleted_extra=len(run.extras) + max(0, found - len(to_copy)))
            return None
        pieces = chunks(to_copy, opts.chunk_messages, max(opts.batch_bytes * 8, 1))
        run.pending_chunks = len(pieces)
        for piece in pieces:
            self._put(ChunkJob(run, piece))
        return run

    def _fill_pool(self, run: FolderRun, dst: Store, to_copy: list[MessageMeta], unaccounted: list[MessageMeta]) -> None:
        """Fingerprint destination messages the checkpoint cannot account for.

        Only those whose size equals the size of some message still to copy can
        match, so only those are fetched: a clean first run fetches nothing.
        """
        sizes = {m.size for m in to_copy}
        candidates = [d for d in unaccounted if d.size in sizes]
        run.extras = [d.uid for d in unaccounted if d.size not in sizes]
        pool: dict[str, list[int]] = defaultdict(list)
        for batch in batches(candidates, self.opts.batch_bytes, self.opts.batch_count):
            for msg in dst.fetch([d.uid for d in batch]):
                pool[sha256(msg.body)].append(msg.meta.uid)
        for uids in pool.values():
            uids.sort(reverse=True)  # pop() adopts the lowest UID first: stable across reruns
        run.pool = dict(pool)

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
            done.append((src_meta.uid, tuple(sorted(want))))
        if self.ckpt:
            self.ckpt.update_flags(fp.source, run.src_uidvalidity, fp.destination, done)
        self.stats.add(fp.source, flags_updated=len(done))

    # -- chunks: copy -----------------------------------------------------------------------------

    def _run_chunk(self, job: ChunkJob, conn: "_Connections") -> None:
        run = job.run
        try:
            if run.transient is None and not run.failed:
                self._copy_chunk(run, job.metas, conn)
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
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
            self._finish_folder(run, conn)
        else:
            self._retry_folder(run.fp, run.attempt, run.transient)

    def _copy_chunk(self, run: FolderRun, metas: list[MessageMeta], conn: "_Connections") -> None:
        fp, opts, stats = run.fp, self.opts, self.stats
        src, dst = conn.src(), conn.dst()
        s_st = conn.select_src(fp.source)
        if s_st.uidvalidity != run.src_uidvalidity:
            raise TransientError(f"UIDVALIDITY of source folder '{display(fp.source)}' changed during the run")
        if opts.check_size:
            conn.select_dst(fp.destination)
        for batch in batches(metas, opts.batch_bytes, opts.batch_count):
            if self.stop.is_set():
                return
            fetched = {msg.meta.uid: msg for msg in src.fetch([m.uid for m in batch])}
            vanished = sum(1 for m in batch if m.uid not in fetched)
            stats.skip(fp.source, "expunged from the source during the run", vanished)
            intents: list[Intent] = []
            items: list[AppendItem] = []
            adopted: list[tuple[Intent, int]] = []
            for m in batch:
                msg = fetched.get(m.uid)
                if msg is None:
                    continue
                flags = copy_flags(m, opts.include_deleted)
                intent = Intent(m.uid, len(msg.body), sha256(msg.body), flags)
                found = run.take(intent.sha256)
                if found is not None:
                    adopted.append((intent, found))
                    continue
                intents.append(intent)
                items.append(AppendItem(msg.body, flags, m.internaldate))
            del fetched
            if adopted:
                self._confirm(run, adopted)
                stats.add(fp.source, found=len(adopted))
            if items:
                self._append(run, dst, intents, items)

    def _confirm(self, run: FolderRun, results: list[tuple[Intent, int | None]], status: str = DONE,
                 reason: str | None = None) -> None:
        if self.ckpt:
            self.ckpt.record_done(run.fp.source, run.src_uidvalidity, run.fp.destination, run.dst_uidvalidity,
                                  results, status, reason)

    def _append(self, run: FolderRun, dst: Store, intents: list[Intent], items: list[AppendItem]) -> None:
        fp = run.fp
        if self.ckpt:
            self.ckpt.record_intents(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity, intents)
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
        results = list(zip(intents, uids))
        altered = self._check_sizes(dst, results) if self.opts.check_size else {}
        self._confirm(run, [r for r in results if r[0].src_uid not in altered])
        for intent, uid in results:
            if intent.src_uid in altered:
                self._confirm(run, [(intent, uid)], ALTERED, altered[intent.src_uid])
                self.stats.fail(fp.source, intent.src_uid, altered[intent.src_uid])
        copied = len(results) - len(altered)
        self.stats.add(fp.source, copied=copied, copied_bytes=sum(i.size for i in intents))

    def _check_sizes(self, dst: Store, results: list[tuple[Intent, int | None]]) -> dict[int, str]:
        """Ask the destination how big each new message is: a server that rewrites bytes is caught here."""
        by_uid = {uid: intent for intent, uid in results if uid is not None}
        if not by_uid:
            return {}
        altered = {}
        for meta in dst.list_messages(sorted(by_uid)):
            intent = by_uid[meta.uid]
            if meta.size != intent.size:
                altered[intent.src_uid] = (
                    f"the destination server changed the message while storing it "
                    f"({intent.size} bytes sent, {meta.size} stored)"
                )
        return altered

    def _reject(self, run: FolderRun, intent: Intent, reason: str) -> None:
        fp = run.fp
        if self.ckpt:
            self.ckpt.record_failed(fp.source, run.src_uidvalidity, fp.destination, run.dst_uidvalidity, intent,
                                    f"rejected by the destination: {reason}")
        self.stats.fail(fp.source, intent.src_uid, f"rejected by the destination: {reason}")

    # -- end of a folder ----------------------------------------------------------------------------

    def _finish_folder(self, run: FolderRun, conn: "_Connections") -> None:
        """Mirror mode: remove destination messages that match nothing on the source."""
        if not self.opts.delete_extra:
            return
        leftovers = run.extras + [uid for uids in run.pool.values() for uid in uids]
        if not leftovers:
            return
        try:
            conn.select_dst(run.fp.destination, readonly=False)
            conn.dst().expunge_uids(sorted(leftovers))
            self.stats.add(run.fp.source, deleted_extra=len(leftovers))
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            self._retry_folder(run.fp, run.attempt, str(e))


class _Connections:
    """A worker's own pair of connections, opened lazily, dropped on transient errors."""

    def __init__(self, open_src, open_dst):
        self._open_src, self._open_dst = open_src, open_dst
        self._src: Store | None = None
        self._dst: Store | None = None

    def src(self) -> Store:
        if self._src is None:
            self._src = self._open_src()
        return self._src

    def dst(self) -> Store:
        if self._dst is None:
            self._dst = self._open_dst()
        return self._dst

    def select_src(self, folder: Folder):
        return self.src().select(folder, readonly=True)

    def select_dst(self, folder: Folder, readonly: bool = True):
        return self.dst().select(folder, readonly=readonly)

    def drop(self) -> None:
        for store in (self._src, self._dst):
            if store is not None:
                try:
                    store.close()
                except Exception:
                    pass
        self._src = self._dst = None

    def close(self) -> None:
        self.drop()
