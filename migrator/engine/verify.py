"""verify: the same walk as the copy, with a check-only action. Read-only on both sides.

Per planned folder, each side becomes a multiset of (SHA-256 of the bytes,
flags, INTERNALDATE as an instant). Messages are paired by hash; what is left
over is missing (source only) or extra (destination only); pairs whose flags or
date differ are reported as such. EXAMINE and BODY.PEEK[] change nothing.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from migrator.digest import fingerprint
from migrator.engine.batching import batches
from migrator.engine.content import CUT_SHORT, served_cut_short
from migrator.engine.flagrules import NO_FLAG_RULES, FlagRules
from migrator.engine.pairs import both_sides, open_pair
from migrator.errors import FolderError
from migrator.filters import NO_FILTERS, Filters
from migrator.imapdate import date_instant
from migrator.naming import Folder, display
from migrator.plan import Plan
from migrator.stores.base import Fingerprinted, History, Kept, Store


@dataclass
class Entry:
    uid: int
    flags: tuple[str, ...]
    date: str


@dataclass
class FolderDiff:
    source: str
    destination: str
    source_count: int = 0
    destination_count: int = 0
    missing: list[dict] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)
    flags_differ: list[dict] = field(default_factory=list)
    date_differs: list[dict] = field(default_factory=list)
    damaged: list[dict] = field(default_factory=list)  # {side, uid, reason}: bytes a store found damaged
    # {uid, since}: kept by a destination with history (an archive's earlier snapshots), deleted on
    # the source since snapshot `since`: what a backup is for, not a difference
    kept: list[dict] = field(default_factory=list)
    # Source messages the plan's filters leave out: not compared; a copy of one on the destination
    # (an earlier run without them) is no extra.
    outside_filters: int = 0
    # Source UIDs of exact twins in one folder that a destination holding one copy per account
    # (Capabilities.labels: Gmail) shows once: it cannot hold two, so not a difference.
    held_once: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def identical(self) -> bool:
        return not (self.missing or self.extra or self.flags_differ or self.date_differs or self.damaged
                    or self.error)


@dataclass
class Side:
    """One side of a folder pair: its messages by fingerprint, and those found damaged (uid, reason)."""

    by_hash: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    damaged: list[tuple[int, str]] = field(default_factory=list)
    cut: list[int] = field(default_factory=list)  # served cut short (content.served_cut_short); compared too
    kept: list[Kept] = field(default_factory=list)
    outside: Counter = field(default_factory=Counter)  # fingerprints of messages the filters leave out


def _side(store: Store, folder: Folder, include_deleted: bool, batch_bytes: int, batch_count: int,
          skip_deleted: bool, side: Side, filters: Filters = NO_FILTERS) -> None:
    store.select(folder, readonly=True)
    metas = store.list_messages()
    if skip_deleted and not include_deleted:
        metas = [m for m in metas if not m.deleted]
    flags = {m.uid: m for m in metas}
    left_out = {m.uid for m in metas if filters and filters.reason(m) is not None}
    if not store.capabilities.bodies and store.capabilities.fingerprints:
        _digests(cast(Fingerprinted, store), metas, side)
        return
    for batch in batches(metas, batch_bytes, batch_count):
        for msg in store.fetch([m.uid for m in batch]):
            if msg.damage:  # named as such, and compared with nothing
                side.damaged.append((msg.meta.uid, msg.damage))
                continue
            meta = flags[msg.meta.uid]
            # A POP3 listing has no date: its fetch() gives the one its copy was stored with.
            date = meta.internaldate or msg.meta.internaldate
            if meta.uid in left_out:  # read too: its copy on the destination is then no extra
                side.outside[fingerprint(msg.body)] += 1
                continue
            side.by_hash[fingerprint(msg.body)].append(Entry(meta.uid, meta.flags, date))
            if served_cut_short(msg.body):
                side.cut.append(meta.uid)


def _digests(store: Fingerprinted, metas: list, side: Side) -> None:
    """The destination compared by the SHA-256s it keeps, its bytes unread (an encrypted archive
    opened without its identity: Capabilities.bodies). One it cannot vouch for is damaged."""
    digests = store.fingerprints([m.uid for m in metas])
    for meta in metas:
        if meta.uid not in digests:
            side.damaged.append((meta.uid, "its frame as stored does not match the SHA-256 the index keeps "
                                           "(`migrator archive check` names the damage)"))
            continue
        side.by_hash[digests[meta.uid]].append(Entry(meta.uid, meta.flags, meta.internaldate))


def verify(plan: Plan, connect_src: Callable[[], Store], connect_dst: Callable[[], Store],
           include_deleted: bool = False, workers: int = 1, batch_bytes: int = 8 << 20,
           batch_count: int = 400, flag_rules: FlagRules = NO_FLAG_RULES) -> list[FolderDiff]:
    """One comparison per destination folder; folders merged into one are compared as their union.
    flag_rules: flags the destination adds by itself (a --dst-preset's) are no difference.

    `workers` connection pairs compare folders at the same time, and each reads its source and
    destination folder at the same time (a verify of a WAN migration took three times as long
    as the migration, one folder and one side after the other). A lost connection or login
    failure ends the verify with that error. connect_src/connect_dst log in one more connection."""
    groups: dict[Folder, list[Folder]] = {}
    for fp in plan.copying():
        groups.setdefault(fp.destination, []).append(fp.source)
    out = [FolderDiff(" + ".join(display(s) for s in sources), display(destination))
           for destination, sources in groups.items()]
    todo: queue.SimpleQueue[tuple[int, Folder, list[Folder]]] = queue.SimpleQueue()
    for i, item in enumerate(groups.items()):
        todo.put((i, *item))
    first = open_pair(connect_src, connect_dst)
    try:
        dst_names = {f.name for f in first[1].list_folders()}
    except BaseException:
        for store in first:
            store.close()
        raise
    errors: list[BaseException] = []

    def work(pair) -> None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-dst") as dst_side:
            try:
                src, dst = pair or open_pair(connect_src, connect_dst)
            except BaseException as e:
                errors.append(e)
                return
            try:
                while not errors:
                    try:
                        i, destination, sources = todo.get_nowait()
                    except queue.Empty:
                        return
                    _verify_folder(out[i], sources, destination if destination in dst_names else None, src, dst,
                                   dst_side, include_deleted, (batch_bytes, batch_count), flag_rules, plan.filters)
            except BaseException as e:  # ends every worker: the verify fails with it
                errors.append(e)
            finally:
                src.close()
                dst.close()

    threads = [threading.Thread(target=work, args=(None,), name=f"verify-{n}", daemon=True)
               for n in range(1, max(1, min(workers, len(groups))))]
    for t in threads:
        t.start()
    work(first)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _verify_folder(diff: FolderDiff, sources: list[Folder], destination: Folder | None, src: Store, dst: Store,
                   dst_side: ThreadPoolExecutor, include_deleted: bool, batching: tuple[int, int],
                   flag_rules: FlagRules, filters: Filters = NO_FILTERS) -> None:
    """Both sides read at the same time; destination None: it does not exist (everything is missing).
    batching: (bytes, messages) per FETCH. filters: the plan's; what they leave out is not compared."""
    batch_bytes, batch_count = batching
    def read_source() -> Side:
        s = Side()
        for source in sources:
            _side(src, source, include_deleted, batch_bytes, batch_count, skip_deleted=True, side=s,
                  filters=filters)
        return s

    def read_destination() -> Side:
        d = Side()
        if destination is not None:
            _side(dst, destination, include_deleted, batch_bytes, batch_count, skip_deleted=False, side=d)
            if dst.capabilities.keeps_history:
                d.kept = cast(History, dst).kept(destination)
        return d

    s, d = both_sides(lambda: _or_folder_error(read_source), lambda: _or_folder_error(read_destination), dst_side)
    if isinstance(s, FolderError):
        diff.error = f"source folder cannot be read: {s}"
    elif isinstance(d, FolderError):
        diff.error = f"destination folder cannot be read: {d}"
    else:
        diff.damaged = ([{"side": "source", "uid": uid, "reason": why} for uid, why in s.damaged]
                        + [{"side": "destination", "uid": uid, "reason": why} for uid, why in d.damaged]
                        + [{"side": "source", "uid": uid, "reason": CUT_SHORT} for uid in s.cut])
        _compare(diff, s.by_hash, d.by_hash, flag_rules)
        if dst.capabilities.labels:
            diff.held_once = [m["source_uid"] for m in diff.missing if d.by_hash.get(m["sha256"])]
            diff.missing = [m for m in diff.missing if not d.by_hash.get(m["sha256"])]
        diff.outside_filters = sum(s.outside.values())
        diff.extra = [e for e in diff.extra if not _take(s.outside, e["sha256"])]
        diff.kept = [{"uid": k.uid, "since": k.since} for k in d.kept]
        diff.source_count += len(s.damaged)
        diff.destination_count += len(d.damaged)


def _take(counts: Counter, key: str) -> bool:
    if counts[key] > 0:
        counts[key] -= 1
        return True
    return False


def _or_folder_error(read: Callable[[], Side]) -> Side | FolderError:
    """read(), or the FolderError it raised: each side's is reported, the other side's result kept."""
    try:
        return read()
    except FolderError as e:
        return e


def _compare(diff: FolderDiff, s: dict[str, list[Entry]], d: dict[str, list[Entry]],
             flag_rules: FlagRules = NO_FLAG_RULES) -> None:
    diff.source_count = sum(len(v) for v in s.values())
    diff.destination_count = sum(len(v) for v in d.values())
    for digest in sorted(set(s) | set(d)):
        left = sorted(s.get(digest, []), key=lambda e: (e.flags, e.date, e.uid))
        right = sorted(d.get(digest, []), key=lambda e: (e.flags, e.date, e.uid))
        # Pair exact (flags, date) matches first, so duplicates with different flags pair sensibly.
        unmatched_right = list(right)
        unmatched_left = []
        for e in left:
            twin = next((r for r in unmatched_right if not flag_rules.differ(e.flags, r.flags) and
                         (not e.date or date_instant(r.date) == date_instant(e.date))), None)
            if twin is not None:
                unmatched_right.remove(twin)
            else:
                unmatched_left.append(e)
        for e in list(unmatched_left):
            if not unmatched_right:
                break
            r = unmatched_right.pop(0)
            unmatched_left.remove(e)
            item = {"sha256": digest, "source_uid": e.uid, "destination_uid": r.uid}
            if flag_rules.differ(e.flags, r.flags):
                diff.flags_differ.append({**item, "source_flags": list(e.flags), "destination_flags": list(r.flags)})
            if e.date and date_instant(e.date) != date_instant(r.date):  # '' = the source has no date (POP3)
                diff.date_differs.append({**item, "source_date": e.date, "destination_date": r.date})
        for e in unmatched_left:
            diff.missing.append({"sha256": digest, "source_uid": e.uid, "flags": list(e.flags), "date": e.date})
        for r in unmatched_right:
            diff.extra.append({"sha256": digest, "destination_uid": r.uid, "flags": list(r.flags), "date": r.date})
