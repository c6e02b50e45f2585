"""The march of one folder, as pure functions: source + destination + checkpoint -> what to do.

No I/O here (the engine lists, fetches and acts), so the decisions are unit-tested.

A source message is *settled* when the checkpoint says it was copied (or adopted)
into the destination folder with the destination's current UIDVALIDITY and that
destination UID still exists. Everything else is copied, unless an identical
message (same SHA-256 of the bytes) is in the *pool*: destination messages the
checkpoint cannot account for. The pool is a multiset: each destination message
is adopted at most once, so two identical source messages need two identical
destination messages.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from migrator.checkpoint import ALTERED, DONE, FAILED, PENDING, UNVERIFIED, Resent, Row
from migrator.engine.verify import date_instant
from migrator.stores.base import MessageMeta


def altered_reason(sent: int, stored: int) -> str:
    return f"the destination server changed the message while storing it ({sent} bytes sent, {stored} stored)"


def copy_flags(meta: MessageMeta, include_deleted: bool) -> tuple[str, ...]:
    return meta.flags if include_deleted else tuple(f for f in meta.flags if f != "\\Deleted")


@dataclass
class Decision:
    to_copy: list[MessageMeta] = field(default_factory=list)
    flag_updates: list[tuple[MessageMeta, MessageMeta]] = field(default_factory=list)  # (source, destination)
    already: int = 0
    deleted_skipped: int = 0
    failed_earlier: list[tuple[int, str]] = field(default_factory=list)  # (source UID, reason): not retried
    altered: list[tuple[int, str]] = field(default_factory=list)
    newly_altered: list[tuple[Row, str]] = field(default_factory=list)  # done rows whose stored size differs
    unaccounted: list[MessageMeta] = field(default_factory=list)  # destination messages no row points to
    claims: list[Row] = field(default_factory=list)  # done rows without a destination UID (no UIDPLUS)
    to_verify: list[Row] = field(default_factory=list)  # copies whose bytes were not compared yet (content.py)
    # Source UID -> its pending row: an APPEND that was in flight when a run died or its connection
    # was cut, and that the destination does not show (yet): it may still be committed later.
    in_doubt: dict[int, Row] = field(default_factory=dict)


def decide(src_msgs: list[MessageMeta], dst_msgs: list[MessageMeta], rows: dict[int, Row], dst_uidvalidity: int,
           *, include_deleted: bool, sync_flags: bool, retry_failed: bool) -> Decision:
    d = Decision()
    dst_by_uid = {m.uid: m for m in dst_msgs}
    accounted: set[int] = set()
    for m in src_msgs:
        if m.deleted and not include_deleted:
            d.deleted_skipped += 1
            continue
        row = rows.get(m.uid)
        if row is not None and row.dst_uidvalidity == dst_uidvalidity:
            if row.status in (DONE, ALTERED, UNVERIFIED) and (row.dst_uid is None or row.dst_uid in dst_by_uid):
                if row.dst_uid is None:
                    d.claims.append(row)
                elif row.dst_uid not in accounted:
                    accounted.add(row.dst_uid)
                    have = dst_by_uid[row.dst_uid]
                    if sync_flags and set(copy_flags(m, include_deleted)) != set(have.flags):
                        d.flag_updates.append((m, have))
                d.already += 1
                if row.status == ALTERED:
                    d.altered.append((m.uid, row.reason or "altered by the destination"))
                elif row.dst_uid is not None and dst_by_uid[row.dst_uid].size != row.size:
                    # Copied, but stored with another size (a run that stopped before its size check).
                    reason = altered_reason(row.size, dst_by_uid[row.dst_uid].size)
                    d.altered.append((m.uid, reason))
                    d.newly_altered.append((row, reason))
                elif row.status == UNVERIFIED and row.dst_uid is not None:
                    d.to_verify.append(row)  # same size: the bytes are compared by the engine
                continue
            if row.status == FAILED and not retry_failed:
                d.failed_earlier.append((m.uid, row.reason or "failed"))
                continue
            if row.status == PENDING:
                d.in_doubt[m.uid] = row
        d.to_copy.append(m)
    d.unaccounted = [m for m in dst_msgs if m.uid not in accounted]
    return d


class Pool:
    """Unaccounted destination messages by SHA-256; take() adopts each one at most once.

    Among identical candidates the one with the same INTERNALDATE and flags is
    preferred, then the same date, then the lowest UID (stable across reruns).
    Shared by the chunks of one folder, hence the lock.
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

    def take(self, digest: str, want: MessageMeta | None = None) -> MessageMeta | None:
        with self._lock:
            cands = self._by_digest.get(digest)
            if not cands:
                return None
            when = date_instant(want.internaldate) if want else None

            def rank(c: MessageMeta):
                same_date = want is not None and date_instant(c.internaldate) == when
                same_flags = want is not None and set(c.flags) == set(want.flags)
                return (not same_date, not same_flags, c.uid)

            best = min(cands, key=rank)
            cands.remove(best)
            self._sizes[best.size] -= 1
            return best

    def leftovers(self) -> list[int]:
        with self._lock:
            return sorted(m.uid for ms in self._by_digest.values() for m in ms)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_digest.values())


def pool_candidates(unaccounted: list[MessageMeta], wanted_sizes: set[int]) -> tuple[list[MessageMeta], list[MessageMeta]]:
    """Split unaccounted destination messages into those worth fingerprinting (a size we look for) and the rest.

    A message can only be identical to one of the same size, so a clean first run fetches nothing.
    """
    cands = [m for m in unaccounted if m.size in wanted_sizes]
    rest = [m for m in unaccounted if m.size not in wanted_sizes]
    return cands, rest


def late_twin_candidates(resent: list[Resent], dst_msgs: list[MessageMeta], rows: dict[int, Row]) -> dict[int, list[MessageMeta]]:
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
