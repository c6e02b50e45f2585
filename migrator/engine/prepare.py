"""Before any folder is marched: destination folders created and subscribed, STATUS taken on both
sides, and the folders a fast rerun may skip found (their watermark still matches).

Fast reruns: when a folder pair is left complete, the STATUS of both sides is stored as a
watermark (engine/ending.py); a rerun that sees the same UIDVALIDITY, UIDNEXT, MESSAGES and
HIGHESTMODSEQ on both sides skips the folder without listing it. Without CONDSTORE (no
HIGHESTMODSEQ) flag changes are invisible to STATUS, so every rerun marches. See docs/resume.md.
"""

from __future__ import annotations

from typing import cast

from migrator.checkpoint import Watermark
from migrator.engine.context import Context
from migrator.naming import Folder, display, parents
from migrator.plan import FolderPlan
from migrator.stores import calls
from migrator.stores.base import FolderStatus, History, Store


class Preparation:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def watermarks(self, folders: list[FolderPlan]) -> dict[Folder, Watermark]:
        """Source folder -> its pair's watermark, for the folders a fast rerun may skip
        (left complete by a run with these options); read once, before preparing."""
        ckpt, opts = self.ctx.ckpt, self.ctx.opts
        if ckpt is None or opts.retry_failed:
            return {}
        key, out = opts.key(), {}
        for fp in folders:
            wm = ckpt.watermark(fp.source, fp.destination)
            if wm is not None and wm.options == key:
                out[fp.source] = wm
        return out

    def prepare(self, src: Store, dst: Store, folders: list[FolderPlan], marks: dict[Folder, Watermark]) -> set[Folder]:
        """Prepare the destination while the source's STATUS is taken; returns the source folders
        found unchanged since the last run (their marks still match)."""
        ctx = self.ctx
        # The planner's listing of the destination, if it was just made, saves a LIST; used
        # once (a retry lists again).
        listed, ctx.plan.destination_listing = ctx.plan.destination_listing, None
        statuses = (lambda: calls.statuses(src, [fp.source for fp in folders])) if ctx.ckpt is not None else dict
        ctx.src_status, existed = ctx.both_sides(statuses, lambda: self._prepare_destination(dst, folders, listed))
        return self._settle_unchanged(dst, folders, marks, existed)

    def _prepare_destination(self, dst: Store, folders: list[FolderPlan], listed=None) -> set[Folder]:
        """Create missing destination folders (empty ones too) and copy subscriptions; returns the
        destination folders there before this run.

        All CREATEs go in one pipelined batch, then all SUBSCRIBEs: two round trips, not
        two per folder (a WAN migration of 200 folders would otherwise wait 400 RTTs here).
        listed: the destination's folders as just listed, or None to list them now."""
        ctx = self.ctx
        if listed is None:
            listed = dst.list_folders()
        existing = {f.name for f in listed}
        existed = set(existing)
        self._retire_gone(dst, existing)
        # The plan says what to subscribe (planner: as on the source, or --subscribe all/none);
        # a destination folder that already existed is subscribed too.
        dst_subscribed = {f.name for f in listed if f.subscribed}
        to_create: dict[Folder, FolderPlan] = {}
        for fp in folders:
            if fp.destination not in existing and fp.destination not in to_create:
                to_create[fp.destination] = fp
                existing.update(parents(fp.destination))  # the server creates those with it
        if ctx.opts.dry_run:
            ctx.would_create.extend(to_create)
            return existed
        created = (calls.create_folders(dst, [(name, fp.special_use) for name, fp in to_create.items()])
                   if to_create else {})
        for name, error in created.items():
            if error is None:
                ctx.stats.mark_created(name)
        for fp in folders:
            error = created.get(fp.destination)
            if error:
                ctx.stats.folder_failed(fp.source, error)
                fp.action = "failed"
        to_subscribe = list(dict.fromkeys(
            fp.destination for fp in folders
            if fp.subscribed and fp.action != "failed" and fp.destination not in dst_subscribed))
        for name, error in (calls.subscribe_folders(dst, to_subscribe) if to_subscribe else {}).items():
            if error:
                ctx.stats.warn(f"cannot subscribe '{display(name)}': {error}")
        return existed

    def _retire_gone(self, dst: Store, existing: set[Folder]) -> None:
        """A destination that keeps snapshots (an archive), mirrored: its folders the plan names
        nowhere, as source or destination (so the source no longer has them: the planner lists
        every source folder, copied or skipped), leave its latest snapshot, their messages kept
        in the earlier ones. Not the parent of a planned folder."""
        ctx = self.ctx
        if not (ctx.opts.delete_extra and dst.capabilities.keeps_history):
            return
        named = {name for fp in ctx.plan.folders for name in (fp.source, fp.destination, *parents(fp.destination))}
        for name in sorted(existing - named):
            held = dst.status(name).messages if ctx.opts.dry_run else cast(History, dst).retire_folder(name)
            ctx.stats.folder_gone(name, held)

    def _settle_unchanged(self, dst: Store, folders: list[FolderPlan], marks: dict[Folder, Watermark],
                          existed: set[Folder]) -> set[Folder]:
        """Fast rerun: the source folders whose pair still shows, on both sides, the STATUS stored
        when it was left complete. One pipelined STATUS batch per side for all of them, so a
        rerun with nothing new costs two round trips, not two per folder plus a login per worker.

        The destination's batch also asks the folders this state copied into that have no usable
        watermark (an interrupted migration resumed, a server without CONDSTORE, other options):
        their message count lets the march open and list them in one round trip (select_and_list's
        expect). A first run asks nothing: its folders are new, or empty, or not ours."""
        ctx = self.ctx
        usable = {fp.source: (fp, marks[fp.source]) for fp in folders
                  if fp.action != "failed" and fp.source in marks}
        ours = [fp.destination for fp in folders
                if fp.action != "failed" and fp.source not in usable and fp.destination in existed]
        wanted = list(dict.fromkeys([fp.destination for fp, _wm in usable.values()]
                                    + sorted(ctx.ckpt.copied_into(ours) if ctx.ckpt and ours else ())))
        if not wanted:
            return set()
        ctx.dst_status = d_st = calls.statuses(dst, wanted)
        settled = set()
        for source, (fp, wm) in usable.items():
            s, d = ctx.src_status.get(fp.source), d_st.get(fp.destination)
            if s is None or d is None or not _matches(wm, s, d):
                continue
            ctx.stats.add(fp.source, already=wm.settled)
            ctx.stats.skip(fp.source, "flagged \\Deleted on the source (--include-deleted copies them)",
                           wm.skipped_deleted)
            settled.add(source)
        return settled


def _matches(wm: Watermark, s: FolderStatus, d: FolderStatus) -> bool:
    """Both sides' STATUS equal to the watermark's. Without CONDSTORE (no HIGHESTMODSEQ) a flag
    change leaves STATUS unchanged, so such a folder never counts as unchanged."""
    if s.highestmodseq is None or d.highestmodseq is None:
        return False
    return ((s.uidvalidity, s.uidnext, s.messages, s.highestmodseq)
            == (wm.src_uidvalidity, wm.src_uidnext, wm.src_messages, wm.src_modseq)
            and (d.uidvalidity, d.uidnext, d.messages, d.highestmodseq)
            == (wm.dst_uidvalidity, wm.dst_uidnext, wm.dst_messages, wm.dst_modseq))
