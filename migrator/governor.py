"""One throttle governor per host: when a server tells one session to back off, every session to it waits.

A server that throttles (Microsoft 365: `NO Request is throttled. Suggested Backoff Time: 1500 ms`,
RFC 5530's `[THROTTLED]` / `[UNAVAILABLE]`, a BYE saying so) counts what the whole account or host
sends, not what one connection sends: a client whose other sessions go on sending during the wait
is throttled again, longer, and may be locked out. So the governor of a host:

- pauses every call made through `turn()` until the wait the server asked for is over (capped by
  `max_backoff`; without a suggested time, 2 s doubling per back-to-back throttle);
- then lets fewer sessions send at once: the allowance is halved at each throttle, and grows back
  by one after each run of `allowed` calls that went through (AIMD, as TCP does);
- says so, once per pause (`on_wait`: the progress line and the report);

and each account has a daily byte budget (DayBudget: `--max-bytes-per-day`; Gmail: 2,500 MB a day
down, 500 MB up, per user): each FETCH and APPEND takes its bytes from it before it is sent
(`spend`), and once the next one does not fit the run stops cleanly (BudgetSpent): a provider that
counts bytes per day is never pushed over it, and the same command run the next day goes on. The
day starts at the first byte. The budget is the account's, not the host's: the providers' caps are
per user, so the mailboxes of a batch on one host each have their own (and a mailbox runs in one
process at a time, on a cluster too).

Throttle answers that arrive during a pause (commands that were already in flight) extend it
when they ask for longer, but are not a new event.

On a Dask cluster each worker process has its own Governors; `relay` tells the others of each
pause (cluster.share_throttles), and `heard` applies one told by another process, so the
backoff holds for the whole batch there too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from migrator.errors import BudgetSpent
from migrator.throttle import suggested_wait

DEFAULT_WAIT = 2.0  # seconds, when the server suggests none
DAY = 86400.0
POLL = 0.2  # a waiting session looks at the stop this often


@dataclass(frozen=True)
class Wait:
    """One pause of a host: when (seconds into the run), for how long, and the server's words."""

    side: str
    host: str
    at: float
    seconds: float
    reason: str
    relayed: bool = False  # asked of another process of the batch (a cluster worker), told to this one

    def line(self) -> str:
        whom = " another worker of the batch" if self.relayed else ""
        return f"{self.side} throttled: waiting {self.seconds:.1f} s as the server asked{whom} ({self.host})"


@dataclass
class Governor:
    side: str  # "source" or "destination": only for what is said
    host: str
    ceiling: int  # sessions that may send at once when all is well (the run's workers)
    max_backoff: float = 300.0
    on_wait: Callable[[Wait], None] | None = None
    clock: Callable[[], float] = time.monotonic
    allowed: int = 0  # 0: the ceiling
    waits: list[Wait] = field(default_factory=list)
    _paused_until: float = 0.0
    _active: int = 0
    _streak: int = 0  # throttles with no success between them: the default wait doubles
    _since_cut: int = 0  # calls that went through since the allowance last changed
    _joined: int = 0  # sessions of the runs using this host now (Governors.joined)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.allowed = self.allowed or max(1, self.ceiling)

    @contextmanager
    def turn(self, stop: threading.Event | None = None) -> Iterator[None]:
        """Wait for the end of a pause and for a free place among the `allowed` sessions, then
        make the call. Raises nothing of its own; a stop ends the wait early (the call is made and
        its owner sees the stop)."""
        with self._cond:
            while not (stop is not None and stop.is_set()):
                left = self._paused_until - self.clock()
                if left <= 0 and self._active < self.allowed:
                    break
                self._cond.wait(min(POLL, left) if left > 0 else POLL)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def resize(self, sessions: int) -> None:
        """Runs sharing this host came or went: the ceiling is all their sessions. A run that
        comes adds its own to the allowance; one that goes takes what is over the new ceiling."""
        with self._cond:
            joined = sessions > 0 and self._joined == 0
            self._joined += sessions
            self.ceiling = max(1, self._joined)
            self.allowed = self.ceiling if joined else max(1, min(self.ceiling, self.allowed + sessions))
            self._cond.notify_all()

    def succeeded(self) -> None:
        """A call went through: the allowance grows back by one per `allowed` of them."""
        with self._cond:
            self._streak = 0
            self._since_cut += 1
            if self.allowed < self.ceiling and self._since_cut >= self.allowed:
                self.allowed += 1
                self._since_cut = 0
                self._cond.notify_all()

    def pausing(self) -> Wait | None:
        """The pause running now, if one is, with the seconds it has still to run."""
        with self._cond:
            left = self._paused_until - self.clock()
            return replace(self.waits[-1], seconds=left) if left > 0 and self.waits else None

    def throttled(self, said: str, asked: float | None = None, relayed: bool = False) -> float:
        """The server said to back off: every session to this host pauses. Returns the seconds
        this pause lasts from now. `asked` and `relayed`: a pause another process was asked for."""
        asked = suggested_wait(said) if asked is None else asked
        with self._cond:
            now = self.clock()
            new = now >= self._paused_until
            if asked is None:
                asked = DEFAULT_WAIT * 2 ** min(self._streak, 8) if new else self._paused_until - now
            wait = max(0.0, min(asked, self.max_backoff))
            self._paused_until = max(self._paused_until, now + wait)
            event = None
            if new:
                self._streak += 1
                self.allowed = max(1, self.allowed // 2)
                self._since_cut = 0
                event = Wait(self.side, self.host, round(time.monotonic() - self._started, 3), wait,
                             said.strip()[:200], relayed)
                self.waits.append(event)
            self._cond.notify_all()
            left = self._paused_until - now
        if event is not None and self.on_wait is not None:
            self.on_wait(event)
        return left


@dataclass
class DayBudget:
    """One account's daily byte budget on one side (--max-bytes-per-day, or a preset's cap)."""

    side: str
    account: str  # user@host: only for what is said
    budget: int | None  # bytes per day; None: no limit
    clock: Callable[[], float] = time.monotonic
    spent: int = 0
    _day_from: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spend(self, nbytes: int) -> None:
        """Take a call's bytes from the day's budget before it is made; BudgetSpent if they do not
        fit (nothing of the call is sent)."""
        if self.budget is None:
            return
        from migrator.filters import size_text

        with self._lock:
            now = self.clock()
            if self._day_from is None or now - self._day_from >= DAY:
                self._day_from, self.spent = now, 0
            if self.spent + nbytes > self.budget:
                verb = "downloaded from" if self.side == "source" else "uploaded to"
                raise BudgetSpent(
                    f"the day's byte budget for {self.account} is spent: {size_text(self.spent)} {verb} it, "
                    f"--max-bytes-per-day {size_text(self.budget)}; stopped",
                    hint="run the same command again tomorrow to go on (nothing is lost or copied twice)")
            self.spent += nbytes


@dataclass
class Governors:
    """The run's governors, one per (side, host). A batch shares one Governors between the mailboxes
    its process runs (batchrun.shared_governors): a throttle one mailbox's session gets pauses every
    mailbox on that host, and each run that is `joined` hears of it (`listening`, its report)."""

    max_backoff: float = 300.0
    # --max-bytes-per-day by side ("source": bytes downloaded from each source account, "destination":
    # uploaded to each destination account); a preset may lower one (Gmail's 2,500 MB down, 500 MB up)
    budgets: dict[str, int] = field(default_factory=dict)
    _by_host: dict[tuple[str, str], Governor] = field(default_factory=dict)
    _by_account: dict[tuple[str, str, str], DayBudget] = field(default_factory=dict)
    _listeners: list[Callable[[Wait], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    relay: Callable[[Wait], None] | None = None  # tells the batch's other processes of a pause (cluster)

    def get(self, side: str, host: str, sessions: int) -> Governor:
        with self._lock:
            key = (side, host.lower())
            gov = self._by_host.get(key)
            if gov is None:
                gov = self._by_host[key] = Governor(side, host, sessions, self.max_backoff, self._said)
            return gov

    def budget(self, side: str, host: str, user: str) -> DayBudget:
        """The daily byte budget of one account (user at host) on one side."""
        with self._lock:
            key = (side, host.lower(), user)
            day = self._by_account.get(key)
            if day is None:
                day = self._by_account[key] = DayBudget(side, f"{user}@{host}" if user else host,
                                                        self.budgets.get(side))
            return day

    def limit_budget(self, side: str, nbytes: int | None) -> None:
        """A side's daily byte budget is at most `nbytes` (a preset's), for its accounts from now on."""
        if nbytes is None:
            return
        with self._lock:
            least = min(self.budgets.get(side, nbytes), nbytes)
            self.budgets[side] = least
            for (day_side, _host, _user), day in self._by_account.items():
                if day_side == side:
                    day.budget = least if day.budget is None else min(day.budget, least)

    def _said(self, wait: Wait) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listen in listeners:
            listen(wait)
        if self.relay is not None and not wait.relayed:
            self.relay(wait)

    def heard(self, side: str, host: str, seconds: float, reason: str) -> None:
        """Another process of the batch was asked to wait `seconds` more by this host: so are this
        process's sessions to it (and those that connect to it before the pause ends)."""
        self.get(side, host, 0).throttled(reason, asked=seconds, relayed=True)

    @contextmanager
    def joined(self, hosts: dict[str, str], sessions: int, on_wait: Callable[[Wait], None]) -> Iterator[None]:
        """A run (one mailbox) using these hosts (side -> host) with `sessions` workers, for as long
        as it runs: the hosts' ceilings count its sessions with those of the other runs sharing
        this Governors, and `on_wait` hears of every pause of any host meanwhile, and of one that
        has begun already (a mailbox that starts during it waits too, and says so)."""
        govs = [self.get(side, host, 0) for side, host in hosts.items()]
        with self._lock:
            self._listeners.append(on_wait)
        for running in filter(None, (gov.pausing() for gov in govs)):
            on_wait(running)
        for gov in govs:
            gov.resize(+sessions)
        try:
            yield
        finally:
            for gov in govs:
                gov.resize(-sessions)
            with self._lock:
                self._listeners.remove(on_wait)

    def waits(self) -> list[Wait]:
        with self._lock:
            return sorted((w for g in self._by_host.values() for w in g.waits), key=lambda w: w.at)
