"""Follow mode: after the first pass, watch the source and copy what changes (docs/follow.md).

Nothing here copies: a change marks its folder dirty, and a dirty folder is marched again as in a
rerun (a MarchJob on the workers and their open connections: the same march, journal, chunks,
end and watermark as the first pass). So a kill -9 while following leaves what any interrupted
run leaves, and a plain rerun settles it.

Watching takes source connections of its own, beside the workers' (FollowOptions.watch_connections,
from --max-connections-per-host):
  - NOTIFY (RFC 5465): one connection for every folder and the folder list (and, on a source
    without CONDSTORE, whose flag changes NOTIFY does not tell, a second one polling);
  - IDLE (RFC 2177): one connection per folder; with k connections, k-1 folders are IDLEd (INBOX
    first, in plan order) and one connection polls the others and LISTs for new folders;
  - neither: one connection polls STATUS of every folder every --poll-interval seconds.
A folder is dirty when its STATUS (UIDVALIDITY, UIDNEXT, MESSAGES, HIGHESTMODSEQ) differs from the
source side of its watermark, the state its last complete march saw; without CONDSTORE a flag
change cannot be seen in STATUS, so every poll marches every polled folder (its flags listed again).
When a watch starts (and after a lost connection is opened again) its folders' STATUS is compared
with the watermarks once on a worker's connection: what changed before the watch began is not lost.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from migrator.engine.context import Context
from migrator.engine.jobs import FollowOptions, MarchJob, PairJob, close_quietly
from migrator.engine.prepare import Preparation
from migrator.engine.scheduler import Scheduler
from migrator.errors import ConnectionFailed, FolderError, TransientError
from migrator.naming import Folder, display
from migrator.stores import calls
from migrator.stores.base import Changes, FolderStatus, Store, Watch

WAIT_STEP = 0.5  # seconds a watcher waits for events before it looks at the end again
READY_WAIT = 30.0  # seconds to wait for the watches to be in place before saying so


class Follower:
    def __init__(self, ctx: Context, scheduler: Scheduler, preparation: Preparation, connect: Callable[[], Store]):
        self.ctx, self.scheduler, self.preparation, self.connect = ctx, scheduler, preparation, connect
        self.opts: FollowOptions = ctx.opts.follow or FollowOptions()
        self.ending = threading.Event()  # a signal or --follow-for: stop watching, finish the change in hand
        self.events: queue.Queue[Changes] = queue.Queue()
        self.folders = {fp.source: fp for fp in ctx.plan.copying()}
        self.polled: list[Folder] = []  # the poller's folders (new folders are added here)
        self._dirty: set[Folder] = set()
        self._active: dict[Folder, tuple[int, ...]] = {}  # folder marching -> its counts before
        self._list_changed = False
        self._planning = False
        self._threads: list[threading.Thread] = []
        self._pollers = 0  # poll watches running (a refused IDLE hands its folder to one)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        if self.opts.on_start:
            self.opts.on_start()
        deadline = None if self.opts.seconds is None else time.monotonic() + self.opts.seconds
        with _signals(self._signalled):
            self._start()
            while not self.ending.is_set() and not self.ctx.stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._take_events(0.1)
                self._dispatch()
                self._report_done()
            self.ending.set()
            for t in self._threads:
                t.join(5)
            self.scheduler.wait_idle()  # the change in hand; a second signal stops it (ctx.stop)
            self._report_done()

    def _signalled(self, signum, frame) -> None:
        if self.ending.is_set():
            self.ctx.stop.set()  # a second signal: stop now, as an interrupted run (exit 130)
        self.ending.set()

    def _take_events(self, timeout: float) -> None:
        try:
            changes = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._dirty |= {f for f in changes.folders if f in self.folders}
            self._list_changed |= changes.folder_list
            try:
                changes = self.events.get_nowait()
            except queue.Empty:
                return

    def _dispatch(self) -> None:
        """Dirty folders marched (one march at a time per folder: changes that come during a march
        are marched after it); a changed folder list planned."""
        for folder in [f for f in self._dirty if f not in self._active]:
            self._dirty.discard(folder)
            self._active[folder] = self.ctx.stats.snapshot(folder)
            # The STATUS taken while preparing is old now: the march asks its own (the watermark's base).
            self.ctx.src_status.pop(folder, None)
            self.ctx.dst_status.pop(self.folders[folder].destination, None)
            self.scheduler.put(MarchJob(self.folders[folder]))
        if self._list_changed and not self._planning and self.opts.plan_new is not None:
            self._list_changed, self._planning = False, True
            self.scheduler.put(PairJob(self._plan_new, "new folders"))

    def _report_done(self) -> None:
        for folder, before in list(self._active.items()):
            if self.scheduler.in_progress(folder):
                continue
            del self._active[folder]
            after = self.ctx.stats.snapshot(folder)
            copied, flags, deleted, failed = (a - b for a, b in zip(after, before, strict=True))
            for n, what in ((copied, "{n} new message{s} copied"), (flags, "flags updated on {n} message{s}"),
                            (deleted, "{n} message{s} deleted (--delete-extra)"),
                            (failed, "{n} failure{s} (in the report)")):
                if n > 0:
                    self._say(f"{display(folder)}: " + what.format(n=n, s="" if n == 1 else "s"))

    def _say(self, line: str) -> None:
        if self.opts.say is not None:
            self.opts.say(line)

    # -- watching ------------------------------------------------------------------------------

    def _start(self) -> None:
        """Plan the watches on the first watch connection's capabilities, start a thread each, and
        say so once every watch is in place."""
        first = self._open_first()
        names = list(self.folders)
        mode = first.capabilities.watch if first is not None else None
        k = max(1, self.opts.watch_connections)
        watches: list[tuple[str, list[Folder] | None]] = []
        if mode == "notify":
            watches = [("notify", None)]
            if first is not None and not first.capabilities.condstore and k > 1:
                self.polled.extend(names)  # NOTIFY tells no flag change without CONDSTORE: polled
                watches.append(("poll", self.polled))
        elif mode == "idle" and k > 1:
            idled = names[: k - 1]
            self.polled.extend(names[k - 1:])
            watches += [("idle", [n]) for n in idled]
            watches.append(("poll", self.polled))
        else:
            self.polled.extend(names)
            watches = [("poll", self.polled)]
        ready = threading.Semaphore(0)
        for i, (kind, folders) in enumerate(watches):
            t = threading.Thread(target=self._watch, args=(kind, folders, first if i == 0 else None, ready),
                                 name=f"watch-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + READY_WAIT
        for _ in watches:  # told once every watch is in place: a change from then on is seen
            ready.acquire(timeout=max(0.0, deadline - time.monotonic()))
        self._say(_describe(watches, self.opts.poll_interval))

    def _open_first(self) -> Store | None:
        try:
            return self.connect()
        except (TransientError, ConnectionFailed) as e:
            self._say(f"cannot open a connection to watch the source ({e}); retrying")
            return None

    def _watch(self, kind: str, folders: list[Folder] | None, store: Store | None,
               ready: threading.Semaphore) -> None:
        """One watch on its own connection, opened again with backoff when it is lost. Once it is
        in place, what changed before (since the last march, or while the connection was down) is
        found by comparing STATUS with the watermarks: by the poll's first round, else on a worker."""
        attempt = 0
        while not self.ending.is_set():
            watch: Watch | None = None
            try:
                if store is None:
                    store = self.connect()
                if kind == "poll":
                    watch = _Poll(self, store, folders or [])
                    self._pollers += 1
                else:
                    watch = store.watch(folders)  # type: ignore[attr-defined]  # capabilities.watch said so
                    self._recheck(folders)
                ready.release()
                attempt = 0
                while not self.ending.is_set():
                    if changes := watch.changes(WAIT_STEP):
                        self.events.put(changes)
            except (TransientError, ConnectionFailed) as e:
                attempt += 1
                self._say(f"watching the source: {e}; connecting again")
                self.ctx.stats.warn(f"follow: the source connection was lost and opened again ({e})")
            except FolderError as e:  # NOTIFY or IDLE refused: these folders are polled instead
                self._say(f"{e}; polling instead")
                self.polled.extend(f for f in (folders or list(self.folders)) if f not in self.polled)
                if self._pollers:
                    ready.release()
                    break  # a poll watch runs already: it takes them (this connection is closed)
                kind, folders = "poll", self.polled
                continue
            finally:
                if watch is not None:
                    watch.close()
            if store is not None:
                close_quietly(store)
                store = None
            self.ending.wait(self.scheduler.backoff(max(1, attempt)))
        if store is not None:
            close_quietly(store)

    def _recheck(self, folders: Sequence[Folder] | None) -> None:
        """On a worker's connection: the folders whose STATUS differs from their watermark are dirty."""
        names = list(folders) if folders is not None else list(self.folders)

        def work(src: Store, _dst: Store) -> None:
            statuses = calls.statuses(src, names)
            self.events.put(Changes(frozenset(n for n in names if self.stale(n, statuses.get(n)))))

        if names:
            self.scheduler.put(PairJob(work, "follow: comparing the source with the watermarks"))

    def stale(self, folder: Folder, st: FolderStatus | None) -> bool:
        """Whether the source folder changed since its last complete march (its watermark)."""
        fp, ckpt = self.folders.get(folder), self.ctx.ckpt
        if fp is None or st is None:
            return False  # not followed, or gone (the march would report it)
        wm = ckpt.watermark(fp.source, fp.destination) if ckpt is not None else None
        if wm is None or wm.options != self.ctx.opts.key() or st.highestmodseq is None:
            return True
        return (st.uidvalidity, st.uidnext, st.messages, st.highestmodseq) != (
            wm.src_uidvalidity, wm.src_uidnext, wm.src_messages, wm.src_modseq)

    # -- new folders ---------------------------------------------------------------------------

    def _plan_new(self, src: Store, dst: Store) -> None:
        """On a worker's pair: new source folders planned by the first pass's rules, their
        destination folders created and subscribed (prepare), then marched like the others."""
        try:
            assert self.opts.plan_new is not None
            new = self.opts.plan_new(src, dst, list(self.ctx.plan.folders))
            copying = [fp for fp in new if fp.action == "copy"]
            self.ctx.plan.folders.extend(new)
            if copying:
                self.preparation.prepare(src, dst, copying, {})
            for fp in copying:
                if fp.action != "copy":
                    continue  # its CREATE failed: reported by prepare
                self._say(f"new folder {display(fp.source)} -> {display(fp.destination)}")
                self.folders[fp.source] = fp
                self.polled.append(fp.source)  # NOTIFY sees it anyway; IDLE and polling do not
                self.events.put(Changes(frozenset({fp.source})))
        finally:
            self._planning = False

    def known_sources(self) -> set[Folder]:
        return {fp.source for fp in self.ctx.plan.folders}


class _Poll:
    """A Watch by polling: every poll_interval, STATUS of the folders (one pipelined round trip)
    and, for new folders, LIST, on the connection it was given."""

    def __init__(self, follower: Follower, store: Store, folders: list[Folder]):
        self.follower, self.store, self.folders = follower, store, folders
        self.next = time.monotonic()  # the first round at once: what changed before the watch began

    def changes(self, timeout: float) -> Changes:
        f = self.follower
        wait = self.next - time.monotonic()
        if wait > 0 and f.ending.wait(min(wait, timeout)) or time.monotonic() < self.next:
            return Changes()
        self.next = time.monotonic() + f.opts.poll_interval
        names = list(self.folders)
        statuses = calls.statuses(self.store, names) if names else {}
        listed = {i.name for i in self.store.list_folders() if i.selectable}
        return Changes(frozenset(n for n in names if f.stale(n, statuses.get(n))),
                       bool(listed - f.known_sources()))

    def close(self) -> None:
        pass


def _describe(watches: list[tuple[str, list[Folder] | None]], interval: float) -> str:
    idled = sum(1 for kind, _ in watches if kind == "idle")
    polled = next((len(f or ()) for kind, f in watches if kind == "poll"), 0)
    if watches and watches[0][0] == "notify":
        also = f"; flags: STATUS every {interval:g} s on another" if polled else ""
        return f"following the source: NOTIFY on one connection (every folder){also}"
    if idled:
        return (f"following the source: IDLE on {idled} folder(s), STATUS every {interval:g} s on one connection"
                f" for {polled} other(s) and new folders")
    return f"following the source: STATUS every {interval:g} s on one connection ({polled} folder(s))"


@contextlib.contextmanager
def _signals(handler) -> Iterator[None]:
    """SIGINT and SIGTERM end following (handler) instead of interrupting the run; only the main
    thread may set handlers (elsewhere, e.g. in tests, the caller ends it through ending)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
