"""The march of one folder, as pure functions: source + destination + checkpoint -> what to do.

No I/O here (the engine lists, fetches and acts), so the decisions are unit-tested.

A source message is *settled* when the checkpoint says it was copied (or adopted)
into the destination folder with the destination's current UIDVALIDITY and that
destination UID still exists. Everything else is copied, unless an identical
message (same SHA-256 of the bytes) is in the *pool*: destination messages the
checkpoint cannot account for. The pool is a multiset: each destination message
is adopted at most once, so two identical source messages need two identical
destination messages; identical messages are paired by INTERNALDATE, then flags,
for each group as a whole (pair_twins).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from migrator.checkpoint import ALTERED, DONE, FAILED, PENDING, UNVERIFIED, Resent, Row
from migrator.engine.flagrules import NO_FLAG_RULES, FlagRules
from migrator.filters import NO_FILTERS, Filters
from migrator.imapdate import date_at_risk, date_key, same_date
from migrator.stores.base import MessageMeta


def altered_reason(sent: int, stored: int) -> str:
    return f"the destination server changed the message while storing it ({sent} bytes sent, {stored} stored)"


def date_reason(sent: str, stored: str) -> str:
    return f"the destination server stored the message with another INTERNALDATE ({stored}; {sent} was sent)"


def found_date_reason(source: str, held: str) -> str:
    return (f"the destination already holds the message with another INTERNALDATE ({held}; the source's is "
            f"{source}): kept, not copied again")


def copy_flags(meta: MessageMeta, include_deleted: bool) -> tuple[str, ...]:
    return meta.flags if include_deleted else tuple(f for f in meta.flags if f != "\\Deleted")


@dataclass
class Decision:
    to_copy: list[MessageMeta] = field(default_factory=list)
    flag_updates: list[tuple[MessageMeta, MessageMeta]] = field(default_factory=list)  # (source, destination)
    already: int = 0
    deleted_skipped: int = 0
    filtered: Counter = field(default_factory=Counter)  # the plan's filters: reason -> messages left out
    too_big: list[tuple[int, str]] = field(default_factory=list)  # (source UID, reason): over the destination's limit
    failed_earlier: list[tuple[int, str]] = field(default_factory=list)  # (source UID, reason): not retried
    altered: list[tuple[int, str]] = field(default_factory=list)
    newly_altered: list[tuple[Row, str]] = field(default_factory=list)  # done rows whose stored size differs
    unaccounted: list[MessageMeta] = field(default_factory=list)  # destination messages no row points to
    claims: list[Row] = field(default_factory=list)  # done rows without a destination UID (no UIDPLUS)
    # (row, its destination UID): copies whose bytes were not compared yet (content.py)
    to_verify: list[tuple[Row, int]] = field(default_factory=list)
    # Source UID -> its pending row: an APPEND that was in flight when a run died or its connection
    # was cut, and that the destination does not show (yet): it may still be committed later.
    in_doubt: dict[int, Row] = field(default_factory=dict)
    # (row, its destination UID): copies of a date a server may store as another (imapdate.date_at_risk),
    # listed again in a session of their own at the folder's end (ending._check_dates)
    dated: list[tuple[Row, int]] = field(default_factory=list)


IN_LABEL_FOLDER = "in another copied folder (a Gmail label): copied there, not to this leftover folder"


def too_big_reason(size: int, limit: int) -> str:
    return (f"larger than the destination accepts ({size} bytes, its limit is {limit}): not sent; "
            "see the plan's preflight")


def decide(src_msgs: list[MessageMeta], dst_msgs: list[MessageMeta], rows: dict[int, Row], dst_uidvalidity: int,
           *, include_deleted: bool, sync_flags: bool, retry_failed: bool, filters: Filters = NO_FILTERS,
           size_limit: int | None = None, flag_rules: FlagRules = NO_FLAG_RULES,
           elsewhere: frozenset | None = None) -> Decision:
    """What to do with each source message. filters: the plan's, applied only to messages that
    would be copied (one copied earlier stays settled). size_limit: the largest message the
    destination takes (APPENDLIMIT, a preset's ceiling): a larger one is reported, not sent.
    flag_rules: flags the destination adds by itself are no difference (flagrules.py).
    elsewhere: for a leftover folder (Gmail's All Mail), the other copied source folders: a message
    one of them shows (MessageMeta.also_in) is theirs, not this folder's, even if copied here before
    (its copy is then an extra, removed only by --delete-extra)."""
    d = Decision()
    dst_by_uid = {m.uid: m for m in dst_msgs}
    accounted: set[int] = set()
    for m in src_msgs:
        if m.deleted and not include_deleted:
            d.deleted_skipped += 1
            continue
        if elsewhere is not None and not elsewhere.isdisjoint(m.also_in):
            d.filtered[IN_LABEL_FOLDER] += 1
            continue
        row = rows.get(m.uid)
        if row is not None and row.dst_uidvalidity == dst_uidvalidity and row.status in (DONE, ALTERED, UNVERIFIED) \
                and (row.dst_uid is None or row.dst_uid in dst_by_uid):
            _settled(d, m, row, dst_by_uid, accounted, include_deleted, flag_rules if sync_flags else None)
            continue
        if filters and (why := filters.reason(m)) is not None:
            d.filtered[why] += 1
            continue
        if size_limit is not None and m.size > size_limit:
            d.too_big.append((m.uid, too_big_reason(m.size, size_limit)))
            continue
        if row is not None and row.dst_uidvalidity == dst_uidvalidity:
            if row.status == FAILED and not retry_failed:
                d.failed_earlier.append((m.uid, row.reason or "failed"))
                continue
            if row.status == PENDING:
                d.in_doubt[m.uid] = row
        d.to_copy.append(m)
    d.unaccounted = [m for m in dst_msgs if m.uid not in accounted]
    return d


def _settled(d: Decision, m: MessageMeta, row: Row, dst_by_uid: dict[int, MessageMeta], accounted: set[int],
             include_deleted: bool, sync_flags: FlagRules | None) -> None:
    """A source message the checkpoint says was copied, its copy still there: flags brought in
    step, a copy stored altered (other size, other date) reported, one not yet compared read back,
    one of a date at risk listed again at the folder's end. sync_flags: the rules flags are
    compared by, None when they are not brought in step."""
    if row.dst_uid is None:
        d.claims.append(row)
    elif row.dst_uid not in accounted:
        accounted.add(row.dst_uid)
        have = dst_by_uid[row.dst_uid]
        if sync_flags is not None and sync_flags.differ(copy_flags(m, include_deleted), have.flags):
            d.flag_updates.append((m, have))
    d.already += 1
    if row.status == ALTERED:
        d.altered.append((m.uid, row.reason or "altered by the destination"))
    elif row.dst_uid is not None and dst_by_uid[row.dst_uid].size != row.size:
        # Copied, but stored with another size (a run that stopped before its size check).
        reason = altered_reason(row.size, dst_by_uid[row.dst_uid].size)
        d.altered.append((m.uid, reason))
        d.newly_altered.append((row, reason))
    elif row.dst_uid is not None and not same_date(row.date, dst_by_uid[row.dst_uid].internaldate):
        # Stored with another date (a run that stopped before its date check: ending.py).
        reason = date_reason(row.date, dst_by_uid[row.dst_uid].internaldate)
        d.altered.append((m.uid, reason))
        d.newly_altered.append((row, reason))
    elif row.status == UNVERIFIED and row.dst_uid is not None:
        d.to_verify.append((row, row.dst_uid))  # same size: the bytes are compared by the engine
    if row.status != ALTERED and row.dst_uid is not None and date_at_risk(row.date):
        d.dated.append((row, row.dst_uid))


class Wanted(NamedTuple):
    """A source message looking for an identical destination message."""

    meta: MessageMeta  # the source message: its INTERNALDATE and flags
    digest: str  # SHA-256 of its bytes
    claim: bool = False  # copied earlier and confirmed without a UID (no UIDPLUS): its copy is there


def _date(m: MessageMeta) -> float | str:
    return date_key(m.internaldate)


# The passes of pair_twins, best match first: a destination copy keeps its INTERNALDATE (IMAP cannot
# change it), so the date decides; flags can be set afterwards, so they only break ties.
_PASSES: tuple[Callable[[MessageMeta], Hashable], ...] = (
    lambda m: (_date(m), frozenset(m.flags)),
    _date,
    lambda m: frozenset(m.flags),
    lambda m: None,
)


def pair_twins(wanted: Iterable[Wanted], pool: Mapping[str, Iterable[MessageMeta]]) -> dict[int, MessageMeta]:
    """Source UID -> the destination message it adopts, decided for each group of identical
    messages (same digest) as a whole, never first come first served.

    Within a group, sources are paired with destination messages of the same INTERNALDATE and
    flags, then of the same date, then of the same flags, then with any left; each pass takes
    sources and destination messages in UID order (stable across reruns). So, claims aside, the
    number of pairs with the same date is the largest possible, whatever order the sources were
    fetched in. Each
    destination message is paired at most once; a source left out is to be copied. Claims come
    first: one is left without its copy only if the group has fewer destination messages than claims.
    """
    groups: dict[str, list[Wanted]] = {}
    for w in wanted:
        if w.digest in pool:
            groups.setdefault(w.digest, []).append(w)
    pairs: dict[int, MessageMeta] = {}
    for digest, sources in groups.items():
        sources.sort(key=lambda w: (not w.claim, w.meta.uid))
        free = sorted(pool[digest], key=lambda m: m.uid)
        room = len(free) - sum(w.claim for w in sources)  # what the others may take: claims keep theirs
        for key in _PASSES:
            buckets: dict[Hashable, deque[MessageMeta]] = {}
            for m in free:
                buckets.setdefault(key(m), deque()).append(m)
            for w in sources:
                if w.meta.uid in pairs or not (w.claim or room > 0):
                    continue
                bucket = buckets.get(key(w.meta))
                if bucket:
                    pairs[w.meta.uid] = bucket.popleft()
                    room -= not w.claim
            taken = {m.uid for m in pairs.values()}
            free = [m for m in free if m.uid not in taken]
    return pairs


class Pool:
    """Unaccounted destination messages by SHA-256; each is adopted at most once (a multiset).

    pair() decides for whole groups of identical messages at once (pair_twins). Filled and paired
    by the march; its leftovers are read by whichever worker ends the folder, hence the lock.
    """

    def __init__(self) -> None:
        self._by_digest: dict[str, list[MessageMeta]] = {}
        self._sizes: Counter = Counter()  # sizes of the candidates left
        self._lock = threading.Lock()

    def add(self, digest: str, meta: MessageMeta) -> None:
        with self._lock:
            self._by_digest.setdefault(digest, []).append(meta)
            self._sizes[meta.size] += 1

    def might_hold(self, size: int) -> bool:
        """False when no candidate has this size: a message of that size needs no fingerprint."""
        with self._lock:
            return self._sizes[size] > 0

    def pair(self, wanted: Iterable[Wanted]) -> dict[int, MessageMeta]:
        """pair_twins against what is left; the destination messages paired leave the pool."""
        with self._lock:
            pairs = pair_twins(wanted, self._by_digest)
            taken = {m.uid for m in pairs.values()}
            for digest, cands in list(self._by_digest.items()):
                self._by_digest[digest] = [m for m in cands if m.uid not in taken]
            for m in pairs.values():
                self._sizes[m.size] -= 1
            return pairs

    def discard(self, uid: int) -> None:
        """A candidate found to be something else (an altered copy): it leaves the pool."""
        with self._lock:
            for cands in self._by_digest.values():
                for m in cands:
                    if m.uid == uid:
                        cands.remove(m)
                        self._sizes[m.size] -= 1
                        return

    def leftovers(self) -> list[int]:
        with self._lock:
            return sorted(m.uid for ms in self._by_digest.values() for m in ms)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_digest.values())


def pool_candidates(unaccounted: list[MessageMeta],
                    wanted_sizes: set[int]) -> tuple[list[MessageMeta], list[MessageMeta]]:
    """Split unaccounted destination messages into those worth fingerprinting (a size we look for)
    and the rest.

    A message can only be identical to one of the same size, so a clean first run fetches nothing.
    """
    cands = [m for m in unaccounted if m.size in wanted_sizes]
    rest = [m for m in unaccounted if m.size not in wanted_sizes]
    return cands, rest


def late_twin_candidates(resent: list[Resent], dst_msgs: list[MessageMeta],
                         rows: dict[int, Row]) -> dict[int, list[MessageMeta]]:
    """For each copy sent again (Resent, by its destination UID), the destination messages that may
    be the first APPEND committed late: no row points to them, they arrived after the folder was
    listed for the resend (UID >= since_uid), and they have the same size. Only these are read to
    compare SHA-256: a folder without such arrivals costs nothing."""
    referenced = {r.dst_uid for r in rows.values() if r.dst_uid is not None and r.status != PENDING}
    present = {m.uid for m in dst_msgs}
    out: dict[int, list[MessageMeta]] = {}
    for e in resent:
        if e.dst_uid not in present:
            continue
        cands = [m for m in dst_msgs if m.uid >= e.since_uid and m.size == e.size and m.uid != e.dst_uid
                 and m.uid not in referenced]
        if cands:
            out[e.dst_uid] = cands
    return out
