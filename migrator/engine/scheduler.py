"""The scheduler: the job queue, the workers, the stop, retries and their backoff.

It knows the two kinds of job (jobs.MarchJob, jobs.ChunkJob) and how to rank them, and that a
worker's connection may hold a folder's end waiting for the next SELECT (Phase.END_DEFERRED): before
taking anything that cannot carry that end, the worker has it sent alone. What a job does is the
folder sync's (engine/sync.py); see docs/engine.md for the threads.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from migrator.engine.context import Context
from migrator.engine.jobs import ChunkJob, Connections, MarchJob, PairJob, close_quietly
from migrator.engine.pairs import open_pair
from migrator.errors import ConnectionFailed, FolderError, TransientError
from migrator.naming import INBOX, Folder, display
from migrator.plan import FolderPlan
from migrator.stores import calls
from migrator.stores.base import Store
from migrator.throttle import is_throttle

if TYPE_CHECKING:  # FolderSync runs the jobs; it queues its own work here
    from migrator.engine.sync import FolderSync

log = logging.getLogger("migrator.engine")
TYPICAL_MESSAGE_BYTES = 50_000  # only to rank a folder whose STATUS has no SIZE among the others

T = TypeVar("T")
Job = MarchJob | ChunkJob | PairJob
PAIR_JOBS: Folder = ("",)  # what PairJobs count as outstanding under (no folder has this name)


class Scheduler:
    def __init__(self, ctx: Context, connect_src: Callable[[], Store], connect_dst: Callable[[], Store],
                 spare: tuple[Store, Store] | None = None):
        self.ctx = ctx
        self.connect_src, self.connect_dst = connect_src, connect_dst
        # Open connections handed over by the planner: used to prepare folders, then by a worker,
        # so a run logs in once less per side (several round trips each on a WAN).
        self._spare = spare
        self._spare_lock = threading.Lock()
        # Biggest work first (a big chunk taken last leaves the other workers idle at the end):
        # chunks by their bytes, marches by their folder's (a big folder's march finds big chunks;
        # a big chunk goes before the marches of small folders); a stop sentinel before anything.
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._outstanding = 0
        self._outstanding_lock = threading.Lock()
        self._all_done = threading.Condition(self._outstanding_lock)  # notified when nothing is outstanding
        self._live: Counter = Counter()  # source folder -> its queued or running jobs, deferred ends
        self._throttle_retries: Counter = Counter()  # source folder -> marches again after a throttle
        # What runs the jobs (engine/sync.py): set by the engine, which makes it with this scheduler.
        self.sync: FolderSync

    # -- a run ---------------------------------------------------------------------------------

    def run(self, prepare: Callable[[], list[MarchJob]], early: bool,
            then: Callable[[], None] | None = None) -> None:
        """prepare() the folders and queue the marches it returns; run workers until no work is
        outstanding, or the stop. early: workers 1..n-1 log in while the folders are prepared,
        instead of after (on a WAN several round trips off the critical path); worker 0 takes the
        spare connections afterwards. then: run once nothing is outstanding, with the workers and
        their connections still there (follow mode queues more work)."""
        n = max(1, self.ctx.opts.workers)
        early = early and n > 1
        threads = [threading.Thread(target=self._worker, args=(early and i > 0,), name=f"worker-{i}", daemon=True)
                   for i in range(n)]
        started: list[threading.Thread] = []
        try:
            if early:
                for t in threads[1:]:
                    t.start()
                    started.append(t)
            for job in prepare():
                self.put(job)
            for t in threads:
                if t not in started:
                    t.start()
                    started.append(t)
            try:
                self.wait_idle()
            except KeyboardInterrupt:
                self.ctx.stop.set()
            if then is not None and not self.ctx.stop.is_set():
                then()
        finally:
            self._stop_workers(started)

    def wait_idle(self) -> None:
        """Wait until no work is outstanding, or the stop."""
        with self._all_done:  # woken by the last job's end; the wait's timeout is for the stop
            while self._outstanding and not self.ctx.stop.is_set():
                self._all_done.wait(0.2)

    def _stop_workers(self, threads: list[threading.Thread]) -> None:
        stop = self.ctx.stop
        if stop.is_set():
            self.ctx.stats.interrupted = True
        for _ in threads:
            self._q.put(((-math.inf, next(self._seq)), None))
        # Interrupted: give workers a few seconds to finish the batch in hand, then leave them
        # (daemon threads). Safe: an APPEND is only sent after its intent is committed.
        deadline = time.monotonic() + self.ctx.opts.stop_grace
        for t in threads:
            while t.is_alive() and not (stop.is_set() and time.monotonic() > deadline):
                t.join(0.2)
        for store in self._take_spare() or ():
            close_quietly(store)

    def on_spare_pair(self, work: Callable[[Store, Store], T]) -> T | None:
        """work(src, dst) on the connections the planner handed over (or a new pair), retried with
        backoff on a transient error; the pair is then left for the first worker. None if stopped
        during a backoff; the last attempt's error is raised."""
        opts = self.ctx.opts
        for attempt in range(1, opts.max_attempts + 1):
            src = dst = None
            try:
                src, dst = self._take_spare() or open_pair(self.connect_src, self.connect_dst)
                out = work(src, dst)
                with self._spare_lock:
                    self._spare = (src, dst)  # for the first worker
                src = dst = None
                return out
            except TransientError as e:
                if attempt == opts.max_attempts:
                    raise
                self.ctx.stats.warn(f"preparing folders: {e}; retrying")
                if self.ctx.stop.wait(self.backoff(attempt)):
                    return None
            finally:
                for store in (src, dst):
                    if store is not None:
                        close_quietly(store)
        return None

    def _take_spare(self) -> tuple[Store, Store] | None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
            return spare

    # -- the queue and what is outstanding -------------------------------------------------------

    def put(self, job: Job, last: bool = False) -> None:
        """last: behind every other job (a folder that waits for others must not take the workers
        they need: with few workers, big waiting folders ranked first would starve them)."""
        self.hold(_source(job))  # a retry is put before its failed job is done: stays > 0
        if isinstance(job, PairJob):  # follow mode's: first
            key = -math.inf
        else:
            work = self._expected_bytes(job.fp) if isinstance(job, MarchJob) else sum(m.size for m in job.metas)
            key = math.inf if last else -work
        self._q.put(((key, next(self._seq)), job))

    def _expected_bytes(self, fp: FolderPlan) -> float:
        """How much a folder's march may lead to copying, to rank it among the chunks: its size as
        its STATUS gave it (or its message count times a typical size); unknown comes first."""
        st = self.ctx.src_status.get(fp.source)
        if st is None:
            return math.inf
        return st.size if st.size is not None else st.messages * TYPICAL_MESSAGE_BYTES

    def hold(self, folder: Folder) -> None:
        """Count work of `folder` as outstanding: a queued or running job, or a deferred folder end."""
        with self._outstanding_lock:
            self._outstanding += 1
            self._live[folder] += 1

    def release(self, folder: Folder) -> None:
        with self._outstanding_lock:
            self._outstanding -= 1
            self._live[folder] -= 1
            if not self._outstanding:
                self._all_done.notify_all()

    def in_progress(self, folder: Folder) -> bool:
        with self._outstanding_lock:
            return self._live[folder] > 0

    # -- retries -------------------------------------------------------------------------------

    def backoff(self, attempt: int) -> float:
        opts = self.ctx.opts
        delay = min(opts.backoff_max, opts.backoff_base * (2 ** (attempt - 1)))
        return delay * (0.5 + random.random() / 2)

    def retry(self, fp: FolderPlan, attempt: int, reason: str) -> None:
        """A transient error: the folder is marched again after a backoff, at most max_attempts times."""
        ctx = self.ctx
        if ctx.stop.is_set():
            return
        if is_throttle(reason) and self._throttle_retries[fp.source] < ctx.opts.max_throttle_waits:
            # The server asked to back off: not a failure. The governor holds every session to its
            # host for the wait, so the folder is marched again at once, using up no attempt.
            self._throttle_retries[fp.source] += 1
            self.put(MarchJob(fp, attempt, time.monotonic()))
            return
        if attempt >= ctx.opts.max_attempts:
            ctx.stats.folder_failed(
                fp.source, f"gave up after {attempt} attempts: {reason} (rerun the same command to resume)"
            )
            return
        ctx.stats.warn(f"'{display(fp.source)}': {reason}; retrying")
        self.put(MarchJob(fp, attempt + 1, time.monotonic() + self.backoff(attempt)))

    def later(self, job: MarchJob, seconds: float) -> None:
        """March again in a while, without using up an attempt, after the other jobs."""
        self.put(MarchJob(job.fp, job.attempt, time.monotonic() + seconds), last=True)

    # -- workers -------------------------------------------------------------------------------

    def _worker(self, log_in_now: bool = False) -> None:
        ctx = self.ctx
        conn = Connections(self.connect_src, self.connect_dst, None if log_in_now else self._take_spare(),
                           ctx.opts.session_errors)
        if log_in_now:
            try:
                conn.both()
            except (TransientError, ConnectionFailed):
                conn.drop()  # the first job connects again, and reports what fails
        try:
            while (job := self._next_job(conn)) is not None:
                try:
                    if ctx.stop.is_set():
                        continue
                    if isinstance(job, MarchJob):
                        wait = job.not_before - time.monotonic()
                        if wait > 0 and ctx.stop.wait(wait):
                            continue
                        self.sync.run_march(job, conn)
                    elif isinstance(job, PairJob):
                        self._pair_job(job, conn)
                    else:
                        self.sync.run_chunk(job, conn)
                except Exception as e:  # a bug must not hang the run: report it on the folder
                    if isinstance(job, PairJob):
                        log.exception("unexpected error")
                        ctx.stats.folder_failed(("(follow mode)",), f"{job.what}: internal error: {e!r}")
                    else:
                        ctx.internal_error(job.fp if isinstance(job, MarchJob) else job.run.fp, e)
                finally:
                    self.release(_source(job))
        finally:
            deferred = conn.take_deferred()
            if deferred is not None:  # only if a bug ended the loop: keep the count right
                self.release(deferred.fp.source)
            conn.close()

    def _pair_job(self, job: PairJob, conn: Connections) -> None:
        """On a transient error the connections are opened again and the work done again, after the
        usual backoff, at most max_attempts times; then it is only warned about."""
        for attempt in range(1, self.ctx.opts.max_attempts + 1):
            try:
                job.work(*conn.both())
                return
            except (TransientError, ConnectionFailed) as e:
                conn.drop()
                if attempt == self.ctx.opts.max_attempts:
                    self.ctx.stats.warn(f"{job.what}: {e}")
                elif self.ctx.stop.wait(self.backoff(attempt)):
                    return

    def _next_job(self, conn: Connections) -> Job | None:
        """The next job from the queue. A folder end deferred on this worker's connection goes with
        the job's first destination round trip if it is a march that can start now; before
        anything else (another kind of job, a wait, an empty queue, the stop) it is sent alone."""
        if conn.deferred is not None:
            try:
                _rank, job = self._q.get_nowait()
            except queue.Empty:
                self.sync.end_alone(conn)
            else:
                if not (isinstance(job, MarchJob) and job.not_before <= time.monotonic()
                        and not self.ctx.stop.is_set()):
                    self.sync.end_alone(conn)
                return job
        follow = self.ctx.opts.follow
        while True:
            try:  # following: an unused connection is kept alive (servers drop idle clients after 30 min)
                return self._q.get(timeout=follow.keepalive if follow else None)[1]
            except queue.Empty:
                self._keep_alive(conn)

    def _keep_alive(self, conn: Connections) -> None:
        """A STATUS of INBOX on each side the worker holds open: one cheap round trip; a connection
        found lost is dropped (the next job opens it again)."""
        try:
            for store in conn.opened():
                calls.statuses(store, [INBOX])
        except (TransientError, ConnectionFailed, FolderError):
            conn.drop()


def _source(job: Job) -> Folder:
    if isinstance(job, PairJob):
        return PAIR_JOBS
    return job.fp.source if isinstance(job, MarchJob) else job.run.fp.source
