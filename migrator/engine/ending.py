"""The end of a folder run: every chunk copied (Phase.COPIED), then ENDED.

The end: copies given no UID are found by content (readback.find_claims); the sizes of the new
copies are checked (one listing of their UIDs: a server that rewrote bytes is caught); copies at
risk are read back and compared; mirror mode removes what matches nothing; then the watermark is
stored if the destination holds exactly what this run made of it.

The deferred end (Phase.END_DEFERRED): a folder's end is left on the worker's connection, to go
with the next folder's SELECT and listing (Store.check_then_open): on a WAN a round trip less per
folder, a third of a small folder's time. It leaves that phase one of two ways, both here:
with_open() (the next march's destination side carries it) or alone() (the worker's next job
cannot: a chunk, a march that must wait, no job, the stop; engine/scheduler.py's _next_job).
Until it is sent it counts as outstanding work (Scheduler.hold), so the run does not end before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migrator.checkpoint import Checkpoint, Watermark
from migrator.engine.context import Context, Ledger
from migrator.engine.crashpoints import crash
from migrator.engine.jobs import Connections, FolderRun, Phase, close_quietly
from migrator.engine.march import altered_reason, date_reason
from migrator.engine.readback import Check, ReadBack
from migrator.errors import ConnectionFailed, FolderError, TransientError
from migrator.imapdate import same_date
from migrator.naming import Folder, display
from migrator.stores import calls
from migrator.stores.base import Checked, FolderStatus, MessageMeta

if TYPE_CHECKING:  # a deferred end is outstanding work there
    from migrator.engine.scheduler import Scheduler


class FolderEnd:
    def __init__(self, ctx: Context, ledger: Ledger, readback: ReadBack, scheduler: Scheduler):
        self.ctx = ctx
        self.ledger = ledger
        self.readback = readback
        self.scheduler = scheduler  # engine/scheduler.py: a deferred end is outstanding work

    def end(self, run: FolderRun, conn: Connections, own_appends: bool) -> None:
        """All chunks done: the end now, or deferred (END_DEFERRED) to go with the next SELECT.
        own_appends: every new message of the folder was appended through this connection."""
        if not self._may_defer(run, conn, own_appends):
            self._finish(run, conn)
            return
        run.advance(Phase.END_DEFERRED)
        self.scheduler.hold(run.fp.source)
        conn.deferred = run
        crash("end-deferred")  # copied and confirmed, sizes not checked yet: the next march checks them

    def _may_defer(self, run: FolderRun, conn: Connections, own_appends: bool) -> bool:
        """Deferred only when the next SELECT's round trip can carry the end: no mirror EXPUNGE, no
        read-back too big to ride along, no copies to find by content (a read-only view of their
        own), something to send (sizes to check, or a watermark's STATUS), and every new message
        of the folder appended through this connection with the folder still selected on it (a
        NOOP then shows them all)."""
        with run.lock:
            unchecked = bool(run.unchecked)
            big_read_back = not self.readback.inline(run.read_back)  # read in batches, in this folder
            claimed = bool(run.claimed)  # found by content in this folder (find_claims)
            dated = bool(run.dated)  # listed again in a session of their own (_check_dates)
        return not (self.ctx.opts.delete_extra or self.ctx.stop.is_set() or big_read_back or claimed or dated
                    or not (unchecked or self._may_keep_watermark(run))
                    or (unchecked and not (own_appends and conn.dst_selected_writable(run.fp.destination))))

    def alone(self, conn: Connections) -> None:
        """The end deferred on conn (if any), sent by itself."""
        run = conn.take_deferred()
        if run is None:
            return
        try:
            self._finish(run, conn)
        except Exception as e:  # as the worker loop does for a job: reported, and the run goes on
            self.ctx.internal_error(run.fp, e)
        finally:
            self.scheduler.release(run.fp.source)

    def with_open(self, ended: FolderRun, conn: Connections, folder: Folder, readonly: bool,
                  expect: int | None) -> tuple[FolderStatus, list[MessageMeta]]:
        """The end of `ended` and the SELECT + listing of `folder`, in one round trip on the
        destination. Runs as the march's destination side: a lost connection retries `ended` here
        and is raised for the march to retry its own folder; anything else that goes wrong with
        `ended` is reported on it, not on the next folder."""
        fp = ended.fp
        try:
            by_uid = ended.take_unchecked()
            checks = ended.take_read_back()  # one batch's worth: end() deferred it
            keep = self._may_keep_watermark(ended)
            try:
                checked, opened = conn.check_then_open(fp.destination, sorted(by_uid), folder, readonly, expect,
                                                       [c.uid for c in checks])
            except (TransientError, ConnectionFailed) as e:
                ended.advance(Phase.RETRY)
                self.scheduler.retry(fp, ended.attempt, str(e))
                raise
            except Exception as e:
                self.ctx.internal_error(fp, e)
                raise
            try:
                self._checked(ended, conn, checked, by_uid, checks, keep)
            except Exception as e:  # a bug, or the state file failing (disk full)
                self.ctx.internal_error(fp, e)
        finally:
            self.scheduler.release(fp.source)
        if isinstance(opened, FolderError):
            raise opened  # the next folder's: its march reports it
        return opened

    def _checked(self, run: FolderRun, conn: Connections, checked: Checked, by_uid: dict, checks: list[Check],
                 keep: bool) -> None:
        """What with_open() learnt of the ended folder: its sizes, read-back and STATUS."""
        if checked.refused:
            run.advance(Phase.FAILED)
            self.ctx.stats.folder_failed(run.fp.source, checked.refused)
            return
        self.readback.compare(run, checks, checked.bodies, self._record_sizes(run, by_uid, checked.metas),
                              checked.digests)
        # A copy not in the answer (expunged meanwhile?) is left unchecked: then no
        # watermark, and the next run's march compares its size.
        if keep and checked.status is not None and len(checked.metas) == len(by_uid):
            self._store_watermark(run, conn, checked.status)
        run.advance(Phase.ENDED)

    def _finish(self, run: FolderRun, conn: Connections) -> None:
        """The end sent now: claims found, sizes checked, mirror mode removes what matches nothing;
        then the watermark is stored."""
        try:
            self.readback.find_claims(run, conn)
            leftovers = sorted(run.extras + run.pool.leftovers()) if self.ctx.opts.delete_extra else []
            # The watermark's STATUS rides along with the size check, unless an EXPUNGE comes between.
            misdated = self._check_dates(run, conn)
            status = self._check_sizes(run, conn, with_status=not leftovers and self._may_keep_watermark(run),
                                       reported=misdated)
            if leftovers:
                conn.select_dst(run.fp.destination, readonly=False)
                conn.dst().expunge_uids(leftovers)
                crash("expunged")
                run.expunged += len(leftovers)
                self.ctx.stats.add(run.fp.source, deleted_extra=len(leftovers))
            self._store_watermark(run, conn, status)
            run.advance(Phase.ENDED)
        except (TransientError, ConnectionFailed) as e:
            conn.drop()
            run.advance(Phase.RETRY)
            self.scheduler.retry(run.fp, run.attempt, str(e))
        except FolderError as e:
            run.advance(Phase.FAILED)
            self.ctx.stats.folder_failed(run.fp.source, str(e))

    def _check_dates(self, run: FolderRun, conn: Connections) -> set[int]:
        """The copies sent with a date outside a 32-bit time_t's range, listed again in a new
        session: a server may keep another date and still show the session that stored them the
        one it was given (imapdate.date_at_risk). Those stored with another date are reported as
        altered, and never copied again. Returns their destination UIDs. Rare dates, so rarely a
        login more."""
        by_uid = run.take_dated()
        if not by_uid:
            return set()
        fresh = conn.fresh_dst()
        try:
            fresh.select(run.fp.destination, readonly=True)
            # Listed twice: Dovecot 2.3 answers a session's first FETCH of such a copy with the
            # date its APPEND cached, and with the date it stored from then on (measured).
            fresh.list_messages(sorted(by_uid))
            held = {m.uid: m.internaldate for m in fresh.list_messages(sorted(by_uid))}
        finally:
            close_quietly(fresh)
        misdated = {uid for uid, date in held.items() if not same_date(by_uid[uid][0].date, date)}
        for uid in sorted(misdated):
            intent, copied = by_uid[uid]
            self.ledger.altered(run, intent, uid, date_reason(intent.date, held[uid]), copied)
        return misdated

    def _check_sizes(self, run: FolderRun, conn: Connections, with_status: bool,
                     reported: set[int]) -> FolderStatus | None:
        """Ask the destination how big each new message is: a server that rewrites bytes is caught here.
        with_status: the folder's STATUS (for the watermark) is asked in the same round trip.

        Done once per folder, not per batch (a round trip saved on every batch). A crash
        before this check is covered too: the next march compares every recorded size with
        the destination's RFC822.SIZE (march.decide).
        """
        by_uid = {uid: i for uid, i in run.take_unchecked().items() if uid not in reported}
        checks = [c for c in run.take_read_back() if c.uid not in reported]
        if not by_uid and not with_status:
            return None
        folder, uids = run.fp.destination, sorted(by_uid)
        if uids and not conn.dst_selected_writable(folder):
            conn.select_dst(folder, readonly=False)
        inline = self.readback.inline(checks)
        checked = calls.list_with_status(conn.dst(), folder, uids, [c.uid for c in checks] if inline else ())
        metas = checked.metas
        if len(metas) < len(uids):
            # Messages another worker appended are not in this session's view yet (and a NOOP
            # did not bring them): a fresh SELECT shows them all.
            conn.select_dst(folder, readonly=False)
            metas = conn.dst().list_messages(uids)
            inline = False  # the bodies are read again in this view
        altered = self._record_sizes(run, by_uid, metas)
        if inline:
            self.readback.compare(run, checks, checked.bodies, altered, checked.digests)
        elif checks:
            self.readback.read(run, conn.dst(), checks, altered)
        return checked.status if with_status else None

    def _record_sizes(self, run: FolderRun, by_uid: dict, metas: list[MessageMeta]) -> set[int]:
        """A copy whose stored size differs from the source's was altered by the server: reported.
        Returns their destination UIDs. The same listing shows whether the flags set by STORE after
        the APPEND (flagrules.py) were kept: one that was not is said, and the folder keeps no
        watermark, so the next run's flag sync sets it again."""
        altered = set()
        rules = self.ctx.opts.flag_rules
        for meta in metas:
            intent = by_uid[meta.uid]
            if meta.size != intent.size:
                self.ledger.altered(run, intent, meta.uid, altered_reason(intent.size, meta.size))
                altered.add(meta.uid)
            if lost := rules.missing(intent.flags, meta.flags):
                run.count(unkept_flags=1)
                self.ctx.stats.warn(f"'{display(run.fp.source)}' UID {intent.src_uid}: the destination did not keep "
                                    f"{' '.join(lost)} set after the APPEND; the next run sets it again")
        return altered

    # -- the watermark ---------------------------------------------------------------------------

    def _may_keep_watermark(self, run: FolderRun) -> bool:
        return self._watermark_base(run) is not None

    def _watermark_base(self, run: FolderRun) -> tuple[Checkpoint, tuple[int, int, int, int]] | None:
        """Whether the folder may be left with a watermark, as far as this run knows: the inputs are
        the run's own (its tally, what it saw listing the destination), not the report's. If it
        may: the journal it goes to, and its source half (the STATUS taken before listing)."""
        ctx, s, journal = self.ctx, run.src_status, self.ctx.journal
        if journal is None or ctx.stop.is_set() or s is None or s.highestmodseq is None:
            return None
        # failed messages must be reported again by the next run's march; messages the plan's
        # filters left out must be marched again by a run without them (or with others)
        if run.tally.failed or run.tally.filtered or run.tally.unkept_flags or run.unknown_uids \
                or not run.dst_consistent:
            return None
        return journal, (s.uidvalidity, s.uidnext, s.messages, s.highestmodseq)

    def _store_watermark(self, run: FolderRun, conn: Connections, d: FolderStatus | None = None) -> None:
        """Remember both sides' STATUS, but only if the destination holds exactly what this run made of it.
        d: the destination's STATUS if already asked, after the last change this run made there.

        Expected: the listed messages + our APPENDs - our expunges, and UIDNEXT just past our last
        APPENDUID. Anything else means someone else wrote there meanwhile: no watermark, next run marches.
        """
        base = self._watermark_base(run)
        if base is None:
            return
        journal, source = base
        fp, tally = run.fp, run.tally
        d = d or conn.dst().status(fp.destination)
        expected_next = max([run.dst_uidnext] + [u + 1 for u in run.appended])
        if (d.highestmodseq is None or d.uidvalidity != run.dst_uidvalidity or d.uidnext != expected_next
                or d.messages != run.dst_messages + len(run.appended) - run.expunged):
            return
        journal.set_watermark(fp.source, fp.destination, Watermark(
            self.ctx.opts.key(), *source, d.uidvalidity, d.uidnext, d.messages, d.highestmodseq,
            settled=tally.settled, skipped_deleted=tally.skipped_deleted,
        ))
