"""Copying a chunk: source bodies fetched a batch ahead, appended to the destination, journalled.

Safety: the intent (source UID, size, flags) is committed to the checkpoint before each APPEND
and confirmed after it (with the SHA-256 when the destination gave no UID: then only the
fingerprint can find the copy again). A crash between the two is settled by the next march,
which looks at the destination.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterable, Iterator

from migrator.checkpoint import UNVERIFIED, Intent, Resent
from migrator.digest import fingerprint
from migrator.engine.batching import batches
from migrator.engine.content import Shape, at_risk, loose_digest, served_cut_short
from migrator.engine.context import Context, Ledger
from migrator.engine.crashpoints import crash
from migrator.engine.jobs import Connections, FolderRun, appends_unseen
from migrator.engine.march import copy_flags
from migrator.engine.readback import Check
from migrator.engine.within import copy_known, dropped, label_known, record_identities
from migrator.errors import MessageRejected, Throttled, TransientError
from migrator.imapdate import date_at_risk
from migrator.naming import display
from migrator.stores.base import AppendItem, FolderStatus, Message, MessageMeta, Store
from migrator.throttle import is_throttle


class Copier:
    def __init__(self, ctx: Context, ledger: Ledger):
        self.ctx = ctx
        self.ledger = ledger
        self._sampled = False  # the run's first copy was taken to be read back (_to_read_back)
        self._sample_lock = threading.Lock()

    def copy_chunk(self, run: FolderRun, metas: list[MessageMeta], conn: Connections,
                   opened: tuple[FolderStatus, FolderStatus] | None = None) -> None:
        """opened: the folders' SELECT answers, when this worker's march has just opened them
        (read-write on the destination) on these connections."""
        ctx, fp, opts, stats = self.ctx, run.fp, self.ctx.opts, self.ctx.stats
        src, dst = conn.both()
        # Read-write on the destination: the folder's size check (ending.py) then needs no SELECT.
        # Read-only where copies get no UID (appends_unseen): imap4d rewrites a folder that was
        # empty when SELECTed from that session's view when it is left, losing what was appended.
        s_st, d_st = opened or ctx.both_sides(
            lambda: conn.select_src(fp.source), lambda: conn.select_dst(fp.destination, readonly=appends_unseen(dst)))
        if s_st.uidvalidity != run.src_uidvalidity:
            raise TransientError(f"UIDVALIDITY of source folder '{display(fp.source)}' changed during the run")
        if d_st.uidvalidity != run.dst_uidvalidity:
            raise TransientError(
                f"UIDVALIDITY of destination folder '{display(fp.destination)}' changed during the run")
        metas = copy_known(ctx, self.ledger, run, conn, metas)  # already in another folder: COPY, no download
        for batch, fetched in prefetch(ctx, src, batches(metas, opts.batch_bytes, opts.batch_count)):
            crash("fetched")
            vanished = sum(1 for m in batch if m.uid not in fetched)
            stats.skip(fp.source, "expunged from the source during the run", vanished)
            intents: list[Intent] = []
            items: list[AppendItem] = []
            for m in batch:
                msg = fetched.get(m.uid)
                if msg is None:
                    continue
                if msg.damage:  # never written anywhere; a rerun tries it again
                    self.ledger.fail(run, Intent(m.uid, m.size, "", ()), f"damaged in the source: {msg.damage}")
                    continue
                if msg.note:
                    stats.warn(f"'{display(fp.source)}' UID {m.uid}: {msg.note}")
                if served_cut_short(msg.body):  # copied as served, reported: IMAP gives no more of it
                    with run.lock:
                        run.cut.add(m.uid)
                flags = copy_flags(m, opts.include_deleted)
                # What the pool holds was adopted by the march (matching.adopt): everything here is
                # copied. No fingerprint (SHA-256 was a sixth of migrator's CPU), unless the
                # destination gives no UID for the copy: then _append takes one before confirming it.
                m = served(m, msg)  # the date a POP3 listing leaves out
                intents.append(Intent(m.uid, m.size, "", flags, m.internaldate))
                items.append(AppendItem(msg.body, flags, m.internaldate, nul_free=msg.nul_free))
            del fetched
            intents, items = self._unheld(run, conn, intents, items)
            if items:
                self._append(run, conn, intents, items)

    def _unheld(self, run: FolderRun, conn: Connections, intents: list[Intent],
                items: list[AppendItem]) -> tuple[list[Intent], list[AppendItem]]:
        """A labels destination (Gmail): what it holds already is labelled, not uploaded (within.py)."""
        if not items or not conn.dst().capabilities.labels:
            return intents, items
        metas = [MessageMeta(i.src_uid, i.size, i.flags, i.date) for i in intents]
        send = label_known(self.ctx, self.ledger, run, conn, [(m, it.body) for m, it in zip(metas, items, strict=True)])
        kept = [(i, it) for i, it in zip(intents, items, strict=True) if i.src_uid in send]
        return [i for i, _ in kept], [it for _, it in kept]

    def _append(self, run: FolderRun, conn: Connections, intents: list[Intent], items: list[AppendItem],
                waits: int = 0) -> None:
        """waits: how often these messages were throttled already (the first APPEND: 0)."""
        fp = run.fp
        dst = conn.dst_within_budget()  # a session near the server's error budget is replaced first
        # The day's byte budget of the account, taken before the intents are written: when it is spent
        # the run stops (BudgetSpent) with nothing of this batch in flight.
        self.ctx.budget("destination").spend(sum(len(item.body) for item in items))
        intents, shapes = self._to_read_back(run, intents, items)
        self.ledger.intents(run, intents)
        crash("intent-written")
        governor = self.ctx.governor("destination")
        try:
            uids = governed_append(self.ctx, dst, fp.destination, items)
        except Throttled as e:
            self._throttled(run, conn, intents, items, shapes, e, waits)
            return
        except MessageRejected as e:
            self._refused(run, conn, intents, items, shapes, e)
            return
        except TransientError as e:
            if is_throttle(str(e)):  # a BYE saying so: the folder is retried once the wait is over
                governor.throttled(str(e))
            raise
        governor.succeeded()
        self._appended(run, conn, intents, items, uids, shapes)

    def _throttled(self, run: FolderRun, conn: Connections, intents: list[Intent], items: list[AppendItem],
                   shapes: dict[int, Shape], e: Throttled, waits: int) -> None:
        """The server asked us to back off: nothing of this APPEND is stored (but the messages of
        a batch sent one APPEND at a time before it: e.stored). Every session to the host waits,
        then the same messages are sent again: a throttle is not a refusal."""
        done = self._stored_before(run, conn, intents, items, shapes, e)
        if waits >= self.ctx.opts.max_throttle_waits or self.ctx.stop.is_set():
            raise TransientError(f"still throttled after {waits} waits: {e}")
        self.ctx.governor("destination").throttled(str(e))
        self._append(run, conn, intents[done:], items[done:], waits + 1)

    def _refused(self, run: FolderRun, conn: Connections, intents: list[Intent], items: list[AppendItem],
                 shapes: dict[int, Shape], e: MessageRejected) -> None:
        if e.stored is None and len(items) > 1:
            # A MULTIAPPEND is all or nothing (RFC 3502): find the bad one(s) one by one.
            for intent, item in zip(intents, items, strict=True):
                self._append(run, conn, [intent], [item])
            return
        # One APPEND a message (one message, or a server without MULTIAPPEND): those before
        # the refused one are stored, and are confirmed as such, never sent again.
        done = self._stored_before(run, conn, intents, items, shapes, e)
        self.ledger.rejected(run, intents[done], self.ctx.why_refused(str(e), items[done].body))
        if done + 1 < len(items):
            self._append(run, conn, intents[done + 1:], items[done + 1:])

    def _stored_before(self, run: FolderRun, conn: Connections, intents: list[Intent], items: list[AppendItem],
                       shapes: dict[int, Shape], e: MessageRejected | Throttled) -> int:
        """The messages of a one-APPEND-at-a-time batch stored before the refused one (e.stored):
        confirmed, never sent again. Returns how many."""
        done = len(e.stored or ())
        if done:
            self._appended(run, conn, intents[:done], items[:done], list(e.stored or ()),
                           {n: s for n, s in shapes.items() if n < done})
        return done

    def _appended(self, run: FolderRun, conn: Connections, intents: list[Intent], items: list[AppendItem],
                  uids: list[int | None], shapes: dict[int, Shape]) -> None:
        """What follows an APPEND the server answered OK: these messages are stored, with these UIDs."""
        crash("append-sent")  # stored on the server, not yet confirmed: settled by the next march
        if conn.dst().capabilities.labels and any(why := dropped(run, uids)):
            self._dropped(run, intents, uids, why)
            kept = [n for n, w in enumerate(why) if w is None]
            intents, items, uids = [intents[n] for n in kept], [items[n] for n in kept], [uids[n] for n in kept]
            shapes = {kept.index(n): s for n, s in shapes.items() if n in kept}
        with run.lock:
            run.appended.extend(u for u in uids if u is not None)
            run.unknown_uids = run.unknown_uids or None in uids
        # Without a destination UID (no UIDPLUS) a copy is found again by its fingerprint only.
        intents = [i if uid is not None or i.sha256 else dataclasses.replace(i, sha256=fingerprint(item.body))
                   for i, item, uid in zip(intents, items, uids, strict=True)]
        self._confirm(run, intents, items, uids, shapes)
        self.ledger.count(run, copied=len(intents), copied_bytes=sum(i.size for i in intents))
        self._store_lost_flags(run, conn, intents, uids)

    def _dropped(self, run: FolderRun, intents: list[Intent], uids: list[int | None], why: list[str | None]) -> None:
        """Gmail answered OK but stored nothing new: the APPENDUID names the copy it held. Journalled
        as that copy (a rerun sends nothing), reported, not counted as copied nor checked as new."""
        gone = [(i, uid, w) for i, uid, w in zip(intents, uids, why, strict=True) if w is not None]
        self.ledger.confirm(run, [(i, uid) for i, uid, _ in gone])
        for _, _, w in gone:
            self.ctx.stats.skip(run.fp.source, w)

    def _store_lost_flags(self, run: FolderRun, conn: Connections, intents: list[Intent],
                          uids: list[int | None]) -> None:
        """Flags the destination loses from an APPEND (flagrules.py: Microsoft 365's \\Flagged),
        set by STORE on the copies now; the folder's end checks them in its listing (ending.py).
        A copy given no UID, or a crash before this, is left to the next run's flag sync."""
        rules = self.ctx.opts.flag_rules
        todo = [(uid, flags) for i, uid in zip(intents, uids, strict=True)
                if uid is not None and (flags := rules.to_store(i.flags))]
        if not todo or not conn.dst_selected_writable(run.fp.destination):
            return
        dst = conn.dst()
        for uid, flags in todo:
            dst.set_flags(uid, flags, ())

    def _confirm(self, run: FolderRun, intents: list[Intent], items: list[AppendItem], uids: list[int | None],
                 shapes: dict[int, Shape]) -> None:
        """After an APPEND: each copy confirmed, and kept for the folder's end (ending.py)."""
        fp, ckpt = run.fp, self.ctx.ckpt
        results = list(zip(intents, uids, strict=True))
        if None in uids:  # no UID: found by content at the folder's end (readback.find_claims)
            with run.lock:
                run.claimed.extend((i, Shape.of(item.body), loose_digest(item.body))
                                   for i, item, uid in zip(intents, items, uids, strict=True) if uid is None)
        if run.in_doubt and ckpt:
            ckpt.record_resent(fp.destination, run.dst_uidvalidity, [
                Resent(uid, i.src_uid, i.size, i.sha256, run.dst_uidnext, run.in_doubt[i.src_uid].updated)
                for i, uid in results if uid is not None and i.src_uid in run.in_doubt])
        # A copy to read back stays 'unverified' until its bytes are compared (readback.py); a
        # crash before that leaves it for the next march to compare (march.decide: to_verify).
        later = {n: uid for n in sorted(shapes) if (uid := uids[n]) is not None}  # position -> destination UID
        checks = [Check(intents[n], uid, shapes[n]) for n, uid in later.items()]
        self.ledger.confirm(run, [result for n, result in enumerate(results) if n not in later])
        self.ledger.confirm(run, [(c.intent, c.uid) for c in checks], UNVERIFIED)
        self.ledger.served_cut(run, results)
        record_identities(self.ctx, run, results)
        crash("confirmed")
        if self.ctx.opts.check_size:
            with run.lock:  # sizes are checked once per folder, at its end (ending.py)
                run.unchecked.extend((intent, uid) for intent, uid in results if uid is not None)
                run.read_back.extend(checks)
                run.dated.extend((i, uid, True) for i, uid in results if uid is not None and date_at_risk(i.date))

    def _to_read_back(self, run: FolderRun, intents: list[Intent],
                      items: list[AppendItem]) -> tuple[list[Intent], dict[int, Shape]]:
        """Which of these copies are read back at the folder's end (engine/content.py): those whose
        bytes are at risk, and the run's first copy (a sample: once per run, as a read-back costs
        the folder's end its ride with the next SELECT, a round trip). Their SHA-256 is taken now
        (it goes into the intent) and their Shape kept, to say what changed without the bytes."""
        shapes: dict[int, Shape] = {}
        out = list(intents)
        if self.ctx.opts.check_size:
            with self._sample_lock:
                sample, self._sampled = not self._sampled, True
            for n, item in enumerate(items):
                if ((n == 0 and sample) or at_risk(item.body, item.nul_free)) and intents[n].src_uid not in run.cut:
                    shapes[n] = Shape.of(item.body)
        for n, (intent, item) in enumerate(zip(intents, items, strict=True)):
            # A message sent again for a pending intent is watched for a late twin (matching.py).
            if not intent.sha256 and (n in shapes or intent.src_uid in run.in_doubt):
                out[n] = dataclasses.replace(intent, sha256=fingerprint(item.body))
        return out, shapes


def served(m: MessageMeta, msg: Message) -> MessageMeta:
    """A listed message with what only its fetched bytes tell: their size (a listed size may be an
    estimate: Capabilities.exact_sizes), and the date a listing may leave out (POP3: read from the
    headers by fetch())."""
    return dataclasses.replace(m, size=len(msg.body), internaldate=m.internaldate or msg.meta.internaldate)


def governed_append(ctx: Context, dst: Store, folder, items: list[AppendItem]) -> list[int | None]:
    """APPEND through the destination host's governor: every session to the host waits out a
    throttle. Without MULTIAPPEND a batch is one APPEND a message, so each message takes its own
    turn: a session never sends the rest of its batch while another session's throttle holds the
    host (the store would send them back to back). A refusal's `stored`, as the store says it."""
    governor = ctx.governor("destination")
    if dst.capabilities.multiappend or len(items) <= 1:
        with governor.turn(ctx.stop):
            return dst.append(folder, items)
    out: list[int | None] = []
    for item in items:
        try:
            with governor.turn(ctx.stop):
                out.extend(dst.append(folder, [item]))
        except (MessageRejected, Throttled) as e:
            e.stored = out  # the messages before this one are on the server
            raise
    return out


def governed_fetch(ctx: Context, src: Store, uids: list[int], nbytes: int = 0) -> dict[int, Message]:
    """FETCH through the source host's governor: it waits out a throttle the source asked for, and
    a throttle answer here pauses every session to the source (the folder is retried after it).
    `nbytes` (the listed sizes) are taken from the day's byte budget first."""
    ctx.budget("source").spend(nbytes)
    governor = ctx.governor("source")
    try:
        with governor.turn(ctx.stop):
            fetched = {msg.meta.uid: msg for msg in src.fetch(uids)}
    except TransientError as e:
        if is_throttle(str(e)):
            governor.throttled(str(e))
        raise
    governor.succeeded()
    return fetched


def prefetch(ctx: Context, src: Store, pieces: Iterable[list[MessageMeta]]) -> Iterator[tuple[list[MessageMeta], dict]]:
    """Yield (batch, {uid: Message}) while a helper thread already FETCHes the next batch.

    The source and destination then work at the same time instead of taking turns
    (the round trip of each FETCH is hidden behind an APPEND). At most two batches
    are in memory per worker: the one being appended and the one prefetched.
    """
    out: queue.Queue = queue.Queue(maxsize=1)
    done = threading.Event()
    stop, throttle = ctx.stop, ctx.opts.throttle

    def produce() -> None:
        try:
            for batch in pieces:
                if stop.is_set() or done.is_set():
                    break
                if throttle and not throttle.acquire(len(batch), sum(m.size for m in batch), stop):
                    break
                fetched = governed_fetch(ctx, src, [m.uid for m in batch], sum(m.size for m in batch))
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
            if stop.is_set():
                return
            yield batch, fetched
    finally:
        done.set()
        while producer.is_alive():  # unblock a producer waiting to put, then let it finish
            try:
                out.get(timeout=0.2)
            except queue.Empty:
                pass
