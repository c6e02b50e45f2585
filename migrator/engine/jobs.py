"""The copy engine's records: its options, a folder run and its phases, the two kinds of job,
and a worker's connections (which keep track of what is selected on the destination)."""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from migrator.engine.flagrules import FlagRules
from migrator.engine.march import Pool
from migrator.engine.pairs import open_pair
from migrator.governor import Governors
from migrator.naming import Folder, display
from migrator.plan import FolderPlan
from migrator.presets import DestinationRules
from migrator.stores import calls
from migrator.stores.base import FolderStatus, MessageMeta, Store
from migrator.throttle import Throttle

OVERQUOTA_HINT = ("the destination is over quota: free space or raise the quota, "
                  "then rerun with --retry-failed")


@dataclass
class FollowOptions:
    """Follow mode (engine/follow.py): after the first pass, watch the source and copy changes."""

    seconds: float | None = None  # --follow-for: end by itself after this long; None: until a signal
    poll_interval: float = 30.0  # seconds between STATUS polls where the source cannot notify
    watch_connections: int = 1  # source connections the watching may use, beside the workers'
    keepalive: float = 600.0  # seconds a worker's unused connections wait before a STATUS keeps them open
    say: Callable[[str], None] | None = None  # one line per change; None: --quiet
    on_start: Callable[[], None] | None = None  # the first pass is over (the runner stops its progress)
    # New source folders: (source, destination connections, folders planned so far) -> the new
    # folders' plans, by the rules of the first pass (the runner's planner); None: not followed.
    plan_new: Callable[[Store, Store, list[FolderPlan]], list[FolderPlan]] | None = None


@dataclass
class EngineOptions:
    workers: int = 4
    batch_bytes: int = 8 * 1024 * 1024  # per FETCH / APPEND batch: bounds memory per worker
    batch_count: int = 400
    chunk_messages: int = 1000  # a folder is split into chunks this big for parallel workers
    include_deleted: bool = False
    sync_flags: bool = True
    delete_extra: bool = False
    dry_run: bool = False
    retry_failed: bool = False
    # Transient errors: a folder is marched at most max_attempts times per run, waiting
    # backoff_base * 2**(n-1) seconds (times 0.5..1 jitter, capped at backoff_max) before
    # attempt n+1: 0.5, 1, 2, 4, 8 s by default. Then the folder is given up for this run
    # (exit 1); its state is kept and the next run resumes it.
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    check_size: bool = True
    # An APPEND in flight when a run died (or its connection was cut) may be committed after the
    # rerun listed the folder: a rerun within this many seconds of it waits before listing again.
    # Later arrivals are found by the next march and the copy sent again is removed (docs/resume.md).
    in_flight_grace: float = 5.0
    stop_grace: float = 5.0  # after Ctrl-C, seconds to let workers finish their batch
    throttle: Throttle | None = None  # run-wide rate limits, shared by all workers
    # The largest message the destination takes, besides its APPENDLIMIT (a preset's hard ceiling):
    # a larger one is reported as failed without being sent.
    max_message_size: int | None = None
    # A server asking us to back off (governor.py): every session to its host waits. A throttled
    # APPEND is sent again after the wait, at most max_throttle_waits times; a folder retried for
    # a throttle uses up no attempt, as often as that too.
    governors: Governors = field(default_factory=Governors)
    max_throttle_waits: int = 30
    # What the destination is known to refuse or change (--dst-preset's [destination] table): the
    # flags it loses from an APPEND or adds by itself (flag_rules), the error answers after which it
    # closes a session (session_errors), its limits (named in the reason of a refusal).
    destination: DestinationRules | None = None
    follow: FollowOptions | None = None  # --follow: watch the source after the first pass

    @functools.cached_property
    def flag_rules(self) -> FlagRules:
        """engine/flagrules.py: flags set by STORE after APPEND; flags the server adds, no difference."""
        return FlagRules.of_destination(self.destination)

    @property
    def session_errors(self) -> int:
        """NO/BAD answers after which the destination closes a session (0: no such limit): a worker
        replaces its destination session before the last one is spent (Connections)."""
        return (self.destination.session_errors or 0) if self.destination else 0

    def key(self) -> str:
        """The options a watermark depends on: a folder left complete under others is marched again."""
        return f"deleted={int(self.include_deleted)},flags={int(self.sync_flags)},mirror={int(self.delete_extra)}"


# -- work items ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one march of a folder found and did, as far as its watermark depends on it. Kept by the
    run itself: the report's counters add up every attempt of the folder, and are the report's."""

    already: int = 0  # copied by an earlier run (or attempt), copy still there
    copied: int = 0
    found: int = 0  # adopted: an identical message was on the destination
    failed: int = 0  # messages reported failed or altered: the next run's march reports them again
    skipped_deleted: int = 0  # flagged \Deleted on the source, not copied
    filtered: int = 0  # left out by the plan's filters: a later run without them copies them
    unkept_flags: int = 0  # copies whose flags set after APPEND the destination did not keep (ending.py)

    @property
    def settled(self) -> int:
        return self.already + self.copied + self.found


class Phase(enum.Enum):
    """Where a folder run is. A run is one march of a folder and what follows from it; a retry
    is a new run. The transitions (_NEXT), drawn in docs/engine.md:

        MARCHING -> COPYING -> COPIED -> ENDED      (MARCHING -> COPIED: nothing to copy)
                               COPIED -> END_DEFERRED -> ENDED   (the end rides with the next SELECT)
        any phase before ENDED -> RETRY (marched again) or FAILED (given up for this run)
    """

    MARCHING = "marching"  # both sides listed: deciding, adopting, setting flags
    COPYING = "copying"  # chunks queued or being copied (pending_chunks of them)
    COPIED = "copied"  # every chunk done: the folder's end (engine/ending.py) is next
    END_DEFERRED = "end deferred"  # the end waits on a worker's connection (Connections.deferred)
    ENDED = "ended"  # checked, claims found, mirror EXPUNGE done, watermark stored if it may be
    RETRY = "retry"  # a transient error: the folder is marched again (transient says why)
    FAILED = "failed"  # a folder error, reported: given up for this run


_NEXT = {
    Phase.MARCHING: {Phase.COPYING, Phase.COPIED, Phase.RETRY, Phase.FAILED},
    Phase.COPYING: {Phase.COPIED, Phase.RETRY, Phase.FAILED},
    Phase.COPIED: {Phase.END_DEFERRED, Phase.ENDED, Phase.RETRY, Phase.FAILED},
    Phase.END_DEFERRED: {Phase.ENDED, Phase.RETRY, Phase.FAILED},
    Phase.RETRY: {Phase.FAILED},  # a chunk's folder error after another chunk's transient one
    Phase.ENDED: set(),
    Phase.FAILED: set(),
}


@dataclass
class FolderRun:
    """One folder's march, copy and end: shared by its chunks while they are copied."""

    fp: FolderPlan
    attempt: int
    src_uidvalidity: int = 0
    dst_uidvalidity: int = 0
    src_status: FolderStatus | None = None  # STATUS before listing: the base of the next watermark
    dst_messages: int = 0  # destination as listed by the march ...
    dst_uidnext: int = 0
    dst_consistent: bool = True  # ... when SELECT and the listing agreed
    appended: list[int] = field(default_factory=list)  # ... and what this run changed there
    unchecked: list = field(default_factory=list)  # (Intent, destination UID) whose stored size is not checked yet
    read_back: list = field(default_factory=list)  # readback.Check: copies whose bytes are compared
    # (Intent, destination UID, copied by this run): copies of a date at risk (ending._check_dates)
    dated: list = field(default_factory=list)
    cut: set[int] = field(default_factory=set)  # source UIDs served cut short (content.served_cut_short)
    unknown_uids: bool = False
    claimed: list = field(default_factory=list)  # (Intent, Shape, loose digest) of copies given no UID
    expunged: int = 0
    pool: Pool = field(default_factory=Pool)  # unaccounted destination messages, by SHA-256
    in_doubt: dict = field(default_factory=dict)  # source UID -> pending Row whose APPEND may land late
    identities: dict[int, str] = field(default_factory=dict)  # source UID -> MessageMeta.identity (within.py)
    extras: list[int] = field(default_factory=list)  # unaccounted destination UIDs not in the pool
    pending_chunks: int = 0
    phase: Phase = Phase.MARCHING
    transient: str = ""  # why the run is to be retried (the first chunk's transient error)
    tally: Tally = field(default_factory=Tally)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def advance(self, to: Phase) -> None:
        with self.lock:
            self._advance(to)

    def _advance(self, to: Phase) -> None:
        if to not in _NEXT[self.phase]:  # a bug: reported as an internal error on the folder
            raise RuntimeError(f"folder run of '{display(self.fp.source)}': {self.phase.value} -> {to.value}")
        self.phase = to

    def chunk_done(self, outcome: Phase | None = None, reason: str = "") -> Phase | None:
        """One chunk is finished: well (outcome None), or with a transient error (RETRY, reason)
        or a folder error (FAILED). The first transient error has the folder marched again once
        all its chunks are done (the others copy nothing more); a folder error gives it up.
        Returns the run's phase if that was its last chunk (COPIED if all went well), else None."""
        with self.lock:
            if outcome is not None and outcome in _NEXT[self.phase]:
                self._advance(outcome)
                self.transient = self.transient or reason
            self.pending_chunks -= 1
            if self.pending_chunks:
                return None
            if self.phase is Phase.COPYING:
                self._advance(Phase.COPIED)
            return self.phase

    def count(self, **counts: int) -> None:
        """Add to the tally (chunks of the folder count at the same time)."""
        with self.lock:
            for key, value in counts.items():
                setattr(self.tally, key, getattr(self.tally, key) + value)

    def take_unchecked(self) -> dict:
        """Destination UID -> Intent of the copies whose stored size is still to be checked; the
        list is emptied (they are checked once)."""
        with self.lock:
            by_uid, self.unchecked = {uid: intent for intent, uid in self.unchecked}, []
        return by_uid

    def take_claimed(self) -> list:
        with self.lock:
            entries, self.claimed = self.claimed, []
        return entries

    def take_dated(self) -> dict:
        with self.lock:
            by_uid, self.dated = {uid: (intent, copied) for intent, uid, copied in self.dated}, []
        return by_uid

    def take_read_back(self) -> list:
        with self.lock:
            entries, self.read_back = self.read_back, []
        return entries


@dataclass
class MarchJob:
    fp: FolderPlan
    attempt: int = 1
    not_before: float = 0.0


@dataclass
class ChunkJob:
    run: FolderRun
    metas: list[MessageMeta]
    opened: tuple | None = None  # (source, destination) SELECT answers: run at once by the march's worker


@dataclass
class PairJob:
    """Work on a worker's pair of connections that belongs to no folder run (follow mode: the
    source's STATUS against the watermarks, new folders planned and created). Taken first."""

    work: Callable[[Store, Store], None]
    what: str = "follow"


def appends_unseen(dst: Store) -> bool:
    """Whether the destination gives no UID for an APPEND (no UIDPLUS): its copies are then found
    by content, the folder is listed read-only and appended to by one session at a time."""
    return not dst.capabilities.uidplus


def close_quietly(store: Store) -> None:
    try:
        store.close()
    except Exception:
        pass


class Connections:
    """A worker's own pair of connections, opened lazily, dropped on transient errors."""

    def __init__(self, connect_src: Callable[[], Store], connect_dst: Callable[[], Store],
                 opened: tuple[Store, Store] | None = None, session_errors: int = 0):
        self._connect_src, self._connect_dst = connect_src, connect_dst
        self._session_errors = session_errors  # EngineOptions.session_errors: 0, no such limit
        self._src: Store | None
        self._dst: Store | None
        self._src, self._dst = opened or (None, None)
        self._dst_selected: tuple[Folder, bool] | None = None  # (folder, readonly) last selected here
        # The run in END_DEFERRED on this connection: its end (size check, read-back, STATUS) goes with
        # the next folder's SELECT here (engine/ending.py). Here, because it needs this connection:
        # the folder is selected on it, and every new message of the folder was appended through it.
        self.deferred: FolderRun | None = None

    def src(self) -> Store:
        if self._src is None:
            self._src = self._connect_src()
        return self._src

    def dst(self) -> Store:
        if self._dst is None:
            self._dst = self._connect_dst()
        return self._dst

    def both(self) -> tuple[Store, Store]:
        if self._dst is not None and self.deferred is None and self._dst_spent():
            self._renew_dst()  # before a march: nothing is selected there yet
        if self._src is None and self._dst is None:
            self._src, self._dst = open_pair(self._connect_src, self._connect_dst)
        return self.src(), self.dst()

    def select_src(self, folder: Folder):
        return self.src().select(folder, readonly=True)

    def select_dst(self, folder: Folder, readonly: bool = True):
        self._dst_selected = None
        st = self.dst().select(folder, readonly=readonly)
        self._dst_selected = (folder, readonly)
        return st

    def select_and_list_dst(self, folder: Folder, readonly: bool, expect: int | None):
        """Store.select_and_list on the destination, keeping track of what is selected."""
        self._dst_selected = None
        opened = calls.select_and_list(self.dst(), folder, readonly=readonly, expect=expect)
        self._dst_selected = (folder, readonly)
        return opened

    def check_then_open(self, done: Folder, uids: list[int], folder: Folder, readonly: bool, expect: int | None,
                        read_back: list[int]):
        """Store.check_then_open on the destination, keeping track of what is selected."""
        self._dst_selected = None
        checked, opened = calls.check_then_open(self.dst(), done, uids, folder, readonly, expect, read_back)
        if not isinstance(opened, Exception):
            self._dst_selected = (folder, readonly)
        return checked, opened

    def _dst_spent(self) -> bool:
        """Whether the destination session has one error answer left before the server closes it."""
        return bool(self._session_errors) and self._dst is not None \
            and self._dst.session_errors >= self._session_errors - 1

    def _renew_dst(self) -> None:
        """A new destination session in place of this one, the folder selected here selected again
        the same way (its messages appended before are all in the new session's view)."""
        selected = self._dst_selected
        if self._dst is not None:
            close_quietly(self._dst)
        self._dst, self._dst_selected = None, None
        if selected is not None:
            self.select_dst(*selected)

    def dst_within_budget(self) -> Store:
        """The destination, replaced by a new session first if the server's error budget of this one
        is spent but for one answer (Microsoft 365 closes a session after 10 errors: its BYE would
        cost the folder a march): the next command may be refused too."""
        if self._dst_spent():
            self._renew_dst()
        return self.dst()

    def fresh_dst(self) -> Store:
        """A new destination session, apart from this worker's, for the caller to close: what a
        server shows a session other than the one that stored a message."""
        return self._connect_dst()

    def opened(self) -> list[Store]:
        """The connections open now (none is opened for asking)."""
        return [store for store in (self._src, self._dst) if store is not None]

    def take_deferred(self) -> FolderRun | None:
        run, self.deferred = self.deferred, None
        return run

    def dst_selection_lost(self) -> None:
        """The destination's selection changed outside these calls (a COPY selects its source)."""
        self._dst_selected = None

    def dst_selected_writable(self, folder: Folder) -> bool:
        return self._dst is not None and self._dst_selected == (folder, False)

    def drop(self) -> None:
        for store in (self._src, self._dst):
            if store is not None:
                close_quietly(store)
        self._src = self._dst = None
        self._dst_selected = None

    def close(self) -> None:
        self.drop()
