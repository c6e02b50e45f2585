"""The march's reads of content: what on the destination is already a copy of what on the source.

Destination messages the checkpoint cannot account for (a crash between APPEND and its
confirmation, a lost state file, a UIDVALIDITY reset, a non-empty destination) form a *pool*, keyed
by SHA-256 of their bytes. A source message still to copy is adopted instead when an identical
message is in the pool (multiset matching: two identical source messages need two identical
destination messages); which twin adopts which copy is decided by march.pair_twins for each group
of identical messages as a whole. Then messages left on both sides may be copies a server altered
(matched by their loose form), and copies sent again may have a first APPEND committed late.
Decisions are march.py's (pure); this module reads and records.
"""

from __future__ import annotations

import bisect
import dataclasses
import time

from migrator.checkpoint import DONE, Checkpoint, Intent
from migrator.digest import fingerprint
from migrator.engine.batching import batches
from migrator.engine.content import Shape, describe_change, loose_digest, loose_window, served_cut_short
from migrator.engine.context import Context, Ledger
from migrator.engine.copying import prefetch, served
from migrator.engine.crashpoints import crash
from migrator.engine.jobs import FolderRun
from migrator.engine.march import Decision, Wanted, copy_flags, found_date_reason, late_twin_candidates, pool_candidates
from migrator.engine.readback import Held, stored_digests
from migrator.imapdate import same_date
from migrator.naming import display
from migrator.stores.base import MessageMeta, Store

# A copy sent again is watched for a late twin this long: no server commits an APPEND a day
# after its connection died (docs/resume.md).
LATE_COMMIT_WINDOW = 86400.0


class Matcher:
    def __init__(self, ctx: Context, ledger: Ledger):
        self.ctx = ctx
        self.opts = ctx.opts
        self.ledger = ledger

    def take_late_twins(self, run: FolderRun, dst: Store, journal: Checkpoint, rows: dict,
                        dst_msgs: list[MessageMeta]) -> tuple[dict, list[MessageMeta]]:
        """Copies sent again for a pending intent (table resent) whose first APPEND was committed
        late after all: the copy sent again is removed (its UID came from APPENDUID: provably
        ours, provably redundant) and the row points at the late one, whose flags decide() then
        brings in step. Order, for a crash at any point: row first, then EXPUNGE, then the marker.
        Returns the rows and the destination listing as they are afterwards."""
        fp = run.fp
        markers = journal.resent(fp.destination, run.dst_uidvalidity)
        if not markers:
            return rows, dst_msgs
        present = {m.uid for m in dst_msgs}
        referenced = {r.dst_uid for r in rows.values() if r.dst_uid is not None}
        cands = late_twin_candidates(markers, dst_msgs, rows)
        wanted = list({m.uid: m for ms in cands.values() for m in ms}.values())
        digests = stored_digests(dst, wanted, self.opts)
        rows, taken, remove, done = dict(rows), set(), [], []
        for e in markers:
            row = rows.get(e.src_uid)
            if e.dst_uid not in present:
                done.append(e.dst_uid)  # gone (expunged by someone, or by a run that died after it)
                continue
            if row is not None and row.dst_uid != e.dst_uid and e.dst_uid not in referenced:
                remove.append(e.dst_uid)  # re-pointed by a run that died before its EXPUNGE
                continue
            late = next((m for m in cands.get(e.dst_uid, ())
                         if digests.get(m.uid) == e.sha256 and m.uid not in taken), None)
            if late is None:
                if time.time() - e.sent > LATE_COMMIT_WINDOW:
                    done.append(e.dst_uid)
                continue
            taken.add(late.uid)
            if row is not None and row.dst_uid == e.dst_uid:
                rows[e.src_uid] = dataclasses.replace(row, dst_uid=late.uid, status=DONE)
                self.ledger.confirm(run, [(dataclasses.replace(row.intent(), sha256=e.sha256), late.uid)])
            remove.append(e.dst_uid)
        self._remove_resent(run, dst, journal, remove, done)
        gone = set(remove)
        return rows, [m for m in dst_msgs if m.uid not in gone]

    def _remove_resent(self, run: FolderRun, dst: Store, journal: Checkpoint, remove: list[int],
                       done: list[int]) -> None:
        """The copies sent again whose first APPEND was found: removed, and their markers dropped
        with those of `done` (gone, or too old to wait for)."""
        fp, stats = run.fp, self.ctx.stats
        if remove and not dst.capabilities.uidplus:
            # EXPUNGE without UIDPLUS removes every \Deleted message of the folder: not ours to do.
            stats.warn(f"'{display(fp.source)}': {len(remove)} message(s) an earlier run sent were "
                       "committed late and are now there twice; the server cannot expunge one "
                       "message alone (no UIDPLUS): remove the newer copies by hand")
            remove.clear()
        if remove:
            dst.expunge_uids(remove)
            crash("late-twin-removed")
            stats.warn(f"'{display(fp.source)}': {len(remove)} APPEND(s) of an earlier run were committed "
                       "late; the copies sent again were removed")
            done.extend(remove)
        journal.drop_resent(fp.destination, run.dst_uidvalidity, done)

    def pair_with_pool(self, run: FolderRun, src: Store, dst: Store, dec: Decision,
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
            copies = self._fingerprint_sources(run, src, dec.to_copy) if dec.unaccounted else []
            served_metas = {w.meta.uid: w.meta for w in copies}
            dec.to_copy = [served_metas.get(m.uid, m) for m in dec.to_copy]  # what follows sees the bytes' sizes
            sizes = {m.size for m in served_metas.values()}
        candidates, rest = pool_candidates(dec.unaccounted, sizes | {row.size for row in dec.claims})
        run.extras = [m.uid for m in rest]
        self._fill_pool(run, dst, candidates)
        crash("pool-fetched")
        if exact and len(run.pool):
            copies = self._fingerprint_sources(run, src, [m for m in dec.to_copy if run.pool.might_hold(m.size)])
        if self.ctx.stop.is_set():
            return None
        digests = {w.meta.uid: w.digest for w in claims + copies}
        return {uid: (found, digests[uid]) for uid, found in run.pool.pair(claims + copies).items()}

    def _fill_pool(self, run: FolderRun, dst: Store, candidates: list[MessageMeta]) -> None:
        """Fingerprint the destination messages that could match something still to copy."""
        by_uid = {m.uid: m for m in candidates}
        for uid, digest in stored_digests(dst, candidates, self.opts).items():  # a damaged copy matches nothing
            run.pool.add(digest, by_uid[uid])

    def _fingerprint_sources(self, run: FolderRun, src: Store, metas: list[MessageMeta]) -> list[Wanted]:
        """These source messages with their fingerprint, each body hashed as it comes and dropped;
        their metadata as served (copying.served)."""
        wanted = []
        for batch, fetched in prefetch(self.ctx, src, batches(metas, self.opts.batch_bytes, self.opts.batch_count)):
            crash("fetched")  # nothing adopted yet: the next march fingerprints them again
            # A damaged message is left to its chunk, which reports it.
            wanted += [Wanted(served(m, msg), fingerprint(msg.body)) for m in batch
                       if (msg := fetched.get(m.uid)) and not msg.damage]
            with run.lock:  # a copy found of one of them is reported as the copy made would be
                run.cut.update(m.uid for m in batch if (msg := fetched.get(m.uid)) and served_cut_short(msg.body))
        return wanted

    def settle_claims(self, run: FolderRun, claims, pairs: dict) -> None:
        """Copies confirmed without a UID (no UIDPLUS): record the UID their fingerprint found."""
        found = [(row.intent(), pairs[row.src_uid][0]) for row in claims if row.src_uid in pairs]
        if found and self.ctx.writing:
            self.ledger.confirm(run, [(intent, meta.uid) for intent, meta in found
                                      if not self._date_changed(run, intent, meta)])

    def match_altered(self, run: FolderRun, src: Store, dst: Store, journal: Checkpoint, dec: Decision,
                      pairs: dict, src_msgs: list[MessageMeta]) -> None:
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
            self._forget_claims(run, journal, dec, claims, set(), src_by_uid)
            return
        sizes = sorted(m.size for m in wanted.values())
        cands = [m for m in left if _any_between(sizes, (m.size - 256) // 2, m.size + 64)]
        cand_sizes = sorted(m.size for m in cands)
        maybe = [m for m in wanted.values() if _any_between(cand_sizes, *loose_window(m.size))]
        held = Held.read(dst, cands, self.opts, exact=False) if maybe else Held()
        found: set[int] = set()
        claimed = {row.src_uid for row in claims}
        for batch, fetched in (prefetch(self.ctx, src, batches(maybe, self.opts.batch_bytes, self.opts.batch_count))
                               if held else ()):
            for m in sorted(batch, key=lambda m: m.uid not in claimed):  # claims first: their copy is there
                msg = fetched.get(m.uid)
                hit = held.take_loose(loose_digest(msg.body)) if msg is not None and not msg.damage else None
                if msg is None or msg.damage or not hit:
                    continue
                uid, stored = hit
                found.add(m.uid)
                intent = Intent(m.uid, len(msg.body), fingerprint(msg.body), copy_flags(m, self.opts.include_deleted),
                                served(m, msg).internaldate)
                self.ledger.altered(run, intent, uid, describe_change(Shape.of(msg.body), stored), copied=False)
                run.pool.discard(uid)
                run.extras = [u for u in run.extras if u != uid]
        dec.to_copy = [m for m in dec.to_copy if m.uid not in found]
        self._forget_claims(run, journal, dec, claims, found, src_by_uid)

    def _forget_claims(self, run: FolderRun, journal: Checkpoint, dec: Decision, claims: list, found: set[int],
                       src_by_uid: dict) -> None:
        """Claims whose copy is not on the destination: the row must not outlive the message."""
        lost = [row for row in claims if row.src_uid not in found]
        if not lost:
            return
        journal.forget(run.fp.source, run.src_uidvalidity, run.fp.destination, [row.src_uid for row in lost])
        dec.to_copy += [src_by_uid[row.src_uid] for row in lost if row.src_uid in src_by_uid]
        dec.already -= len(lost)

    def adopt(self, run: FolderRun, dst: Store, to_copy: list[MessageMeta], pairs: dict) -> list[MessageMeta]:
        """Record each paired message as copied to its destination message, with the source's
        flags set there; returns the messages left to copy."""
        opts, fp = self.opts, run.fp
        adopting = [m for m in to_copy if m.uid in pairs]
        for start in range(0, len(adopting), opts.batch_count):
            adopted = []
            for m in adopting[start:start + opts.batch_count]:
                found, digest = pairs[m.uid]
                flags = copy_flags(m, opts.include_deleted)
                add, remove = opts.flag_rules.changes(flags, found.flags)
                if opts.sync_flags and (add or remove):
                    dst.set_flags(found.uid, add, remove)
                    self.ctx.stats.add(fp.source, flags_updated=1)
                # Its size as the destination lists it: the next march compares the two.
                intent = Intent(m.uid, found.size, digest, flags, m.internaldate)
                if not self._date_changed(run, intent, found):
                    adopted.append((intent, found.uid))
            self.ledger.confirm(run, adopted)
            self.ledger.served_cut(run, adopted)
            crash("adopted")
            self.ledger.count(run, found=len(adopted))
        return [m for m in to_copy if m.uid not in pairs]


    def _date_changed(self, run: FolderRun, intent: Intent, found: MessageMeta) -> bool:
        """A copy found with the source's bytes but another INTERNALDATE (pair_twins pairs by date
        first; none was left): reported as altered, since IMAP cannot change a stored date, and
        kept, never copied again. True if so."""
        if same_date(intent.date, found.internaldate):
            return False
        self.ledger.altered(run, intent, found.uid, found_date_reason(intent.date, found.internaldate), copied=False)
        return True


def _any_between(sorted_sizes: list[int], low: int, high: int) -> bool:
    i = bisect.bisect_left(sorted_sizes, low)
    return i < len(sorted_sizes) and sorted_sizes[i] <= high
