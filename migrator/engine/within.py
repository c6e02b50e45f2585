"""Messages in several folders (a Gmail source: one message, many labels): downloaded once.

A source store with Capabilities.identities lists each message with its identity (Gmail's
X-GM-MSGID). When a copy is confirmed, the journal keeps where it was stored (Checkpoint
identities table). A later folder that shows the same message is given that copy by the
destination itself (CopyWithin.copy: IMAP COPY) instead of a second download and APPEND. A
destination without it (the archive) gets the source's bytes again, as for any message.

Folders of such a source are marched one after the other (sync.py: _wait_for_earlier), so a
message's first copy is confirmed before the next folder decides; within a folder, chunks still
copy in parallel. Safety is the engine's usual: the intent is journalled before the COPY and
confirmed after; a crash between the two leaves a pending row that the next march settles by
content, as after an APPEND.

A destination with Capabilities.labels (Gmail) holds one copy of a message per account and shows it
in many folders: a source without identities (Dovecot, where a message sits in INBOX and Work) is keyed
by each body's SHA-256 instead (label_known), so a message is uploaded once and labelled for every
other folder (CopyWithin.copy: STORE X-GM-LABELS). Gmail drops an APPEND of a message it holds already,
answering with the held copy's UID: copying.py counts that as a duplicate, not a copy (dropped()).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import cast

from migrator.checkpoint import Intent, Stored
from migrator.digest import fingerprint
from migrator.engine.context import Context, Ledger
from migrator.engine.jobs import Connections, FolderRun
from migrator.engine.march import copy_flags
from migrator.naming import display
from migrator.stores.base import CopyWithin, MessageMeta


def copy_known(ctx: Context, ledger: Ledger, run: FolderRun, conn: Connections,
               metas: list[MessageMeta]) -> list[MessageMeta]:
    """Copy within the destination the messages of `metas` that it already holds in another
    folder; returns the others, to be downloaded and APPENDed."""
    dst, ckpt = conn.dst(), ctx.ckpt
    if ckpt is None or not dst.capabilities.copy or not any(m.identity for m in metas):
        return metas
    known = ckpt.stored_copies({m.identity for m in metas if m.identity})
    groups: dict[tuple, list[tuple[MessageMeta, Stored]]] = defaultdict(list)
    rest = []
    for m in metas:
        there = [s for s in known.get(m.identity or "", []) if s.folder != run.fp.destination and s.size == m.size]
        if there:
            groups[(there[0].folder, there[0].uidvalidity)].append((m, there[0]))
        else:
            rest.append(m)
    for (folder, uidvalidity), pairs in groups.items():
        rest.extend(_copy_group(ctx, ledger, run, conn, cast(CopyWithin, dst), folder, uidvalidity, pairs))
    return rest


def _copy_group(ctx: Context, ledger: Ledger, run: FolderRun, conn: Connections, dst: CopyWithin, folder,
                uidvalidity: int, pairs: list[tuple[MessageMeta, Stored]]) -> list[MessageMeta]:
    """One COPY from one destination folder; returns the messages it could not copy there."""
    intents = [Intent(m.uid, m.size, "", copy_flags(m, ctx.opts.include_deleted), m.internaldate) for m, _ in pairs]
    ledger.intents(run, intents)
    conn.dst_selection_lost()  # COPY selects the folder it copies from
    got = dst.copy(folder, uidvalidity, [s.uid for _, s in pairs], run.fp.destination)
    if got is None:  # that folder was recreated: its copies are gone, the source's bytes are sent
        return [m for m, _ in pairs]
    done = [(i, u) for i, (_, s) in zip(intents, pairs, strict=True) if (u := got.get(s.uid)) is not None]
    if len(done) < sum(1 for _, s in pairs if s.uid in got):
        # Copied, but the server said not where: the intents stay pending, and the next march finds
        # those copies by their bytes (as after an APPEND in flight), never copying them twice.
        ctx.stats.warn(f"'{display(run.fp.destination)}': COPY gave no UIDs; the next run settles those copies")
    with run.lock:
        run.appended.extend(u for _, u in done if u is not None)
        run.unchecked.extend((i, u) for i, u in done if u is not None)
    ledger.confirm(run, done)
    record_identities(ctx, run, done)
    ledger.count(run, copied=len(done))
    ctx.stats.add(run.fp.source, copied_within=len(done))
    return [m for m, s in pairs if s.uid not in got]  # gone from that folder meanwhile: sent again


def record_identities(ctx: Context, run: FolderRun, results: Sequence[tuple[Intent, int | None]]) -> None:
    """Where the messages with an identity were stored (for the next folder that shows them)."""
    if ctx.ckpt is None or not run.identities:
        return
    stored = [(run.identities[i.src_uid], uid, i.size) for i, uid in results
              if uid is not None and i.src_uid in run.identities]
    if stored:
        ctx.ckpt.record_identities(run.fp.destination, run.dst_uidvalidity, stored)


# Report lines (stats.skip) for what Gmail cannot hold twice
HELD_ALREADY = "Gmail holds this message already in this folder (one copy per account): not uploaded again"
DUPLICATE_IN_FOLDER = ("an exact duplicate of another message in this folder: Gmail holds one copy per "
                       "account, so the folder shows it once")


def label_known(ctx: Context, ledger: Ledger, run: FolderRun, conn: Connections,
                found: list[tuple[MessageMeta, bytes]]) -> set[int]:
    """A labels destination (Gmail): the fetched messages it already holds (same SHA-256, journalled
    by an earlier folder or run) are labelled for this folder instead of uploaded; one held in this
    very folder is an exact duplicate there, reported. Returns the source UIDs still to APPEND."""
    dst, ckpt = conn.dst(), ctx.ckpt
    if ckpt is None or not dst.capabilities.labels or not dst.capabilities.copy:
        return {m.uid for m, _ in found}
    with run.lock:  # a source's own identity (X-GM-MSGID) first: copy_known looked that up already
        idents = {m.uid: run.identities.get(m.uid) or "sha256:" + fingerprint(body) for m, body in found}
        run.identities.update(idents)  # record_identities keeps where each lands
    known = ckpt.stored_copies(set(idents.values()))
    groups: dict[tuple, list[tuple[MessageMeta, Stored]]] = defaultdict(list)
    send: set[int] = set()
    for m, _ in found:
        held = [s for s in known.get(idents[m.uid], []) if s.size == m.size]
        if any(s.folder == run.fp.destination for s in held):
            ctx.stats.skip(run.fp.source, DUPLICATE_IN_FOLDER)
        elif held:
            groups[(held[0].folder, held[0].uidvalidity)].append((m, held[0]))
        else:
            send.add(m.uid)
    for (folder, uidvalidity), pairs in groups.items():
        left = _copy_group(ctx, ledger, run, conn, cast(CopyWithin, dst), folder, uidvalidity, pairs)
        send.update(m.uid for m in left)
    return send


def dropped(run: FolderRun, uids: Sequence[int | None]) -> list[str | None]:
    """After an APPEND to a labels destination: for each message, why it was not stored anew (its UID
    names a copy held before: Gmail dropped the APPEND), or None. Call before run.appended grows."""
    with run.lock:
        seen = set(run.appended)
    out: list[str | None] = []
    for uid in uids:
        if uid is not None and (uid < run.dst_uidnext or uid in seen):
            out.append(DUPLICATE_IN_FOLDER if uid in seen else HELD_ALREADY)
        else:
            out.append(None)
        if uid is not None:
            seen.add(uid)
    return out
