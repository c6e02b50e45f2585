"""Content checks on the destination: copies read back and compared with what was sent, and
messages found again by their content (engine/content.py says which and how).

- Check / ReadBack: a copy's stored bytes against the SHA-256 of what was sent; for this run's
  copies at risk of a same-size change (at the folder's end), and for an earlier run's copies it
  stopped before reading back (the march, march.decide's to_verify): one comparison for both.
- Held: destination messages read for their content and found again by it, identical (SHA-256)
  or altered (the loose form); for copies given no UID (find_claims, at the folder's end) and for
  copies a server altered that no row points to (the march, matching.py): one lookup for both.

A store that keeps each message's SHA-256 and never alters bytes (Capabilities.fingerprints: the
archive) is asked for the SHA-256 instead of the bytes (stored_digests): an encrypted archive is
written by a backup that holds no key to read it.
"""

from __future__ import annotations

from collections.abc import Container
from typing import NamedTuple, cast

from migrator.checkpoint import Intent
from migrator.digest import fingerprint
from migrator.engine.batching import batches
from migrator.engine.content import Shape, describe_change, loose_digest, same_size_change
from migrator.engine.context import Context, Ledger
from migrator.engine.jobs import Connections, EngineOptions, FolderRun
from migrator.imapdate import date_at_risk
from migrator.stores.base import Fingerprinted, MessageMeta, Store, intact


class Check(NamedTuple):
    """A copy to read back. shape: what was sent, counted (content.Shape), for this run's copies;
    None for an earlier run's, of which only the SHA-256 is known (so a change is told by its size
    only, and the copy was not counted as copied by this run)."""

    intent: Intent
    uid: int  # on the destination
    shape: Shape | None = None


class ReadBack:
    def __init__(self, ctx: Context, ledger: Ledger):
        self.ctx, self.opts = ctx, ctx.opts
        self.ledger = ledger

    def inline(self, checks: list[Check]) -> bool:
        """Whether the copies to read back can ride with the folder's size check (and so with the
        next folder's SELECT): one batch's worth, and none holding NUL (read through fetch(),
        which asks a server's BINARY form where BODY[] cannot carry NUL)."""
        opts = self.opts
        return (len(checks) <= opts.batch_count and sum(c.intent.size for c in checks) <= opts.batch_bytes
                and not any(c.shape and c.shape.nul for c in checks))

    def compare(self, run: FolderRun, checks: list[Check], bodies: dict[int, bytes],
                skip: Container[int] = frozenset(), digests: dict[int, str] | None = None) -> None:
        """Each copy read back against the SHA-256 of what was sent: confirmed, or recorded as
        altered. A copy in `skip` (found altered by its size) or not in `bodies` nor `digests` (a
        Fingerprinted store's answer; not in this session's view, or expunged) stays unverified:
        the next march compares it."""
        same = []
        for c in checks:
            body = bodies.get(c.uid)
            digest = fingerprint(body) if body is not None else (digests or {}).get(c.uid)
            if c.uid in skip or digest is None:
                continue
            if digest == c.intent.sha256:
                same.append((c.intent, c.uid))
            else:
                reason = (describe_change(c.shape, body) if c.shape and body is not None
                          else same_size_change(c.intent.size))
                self.ledger.altered(run, c.intent, c.uid, reason, copied=c.shape is not None)
        self.ledger.confirm(run, same)

    def read(self, run: FolderRun, dst: Store, checks: list[Check], skip: Container[int] = frozenset()) -> None:
        """compare() for copies in the folder selected on dst, read in batches (memory stays bounded)."""
        opts = self.opts
        if dst.capabilities.fingerprints:
            self.compare(run, checks, {}, skip, cast(Fingerprinted, dst).fingerprints([c.uid for c in checks]))
            return
        for batch in batches(checks, opts.batch_bytes, opts.batch_count, size=lambda c: c.intent.size):
            bodies = {msg.meta.uid: msg.body for msg in intact(dst.fetch([c.uid for c in batch]))}
            self.compare(run, batch, bodies, skip)

    def find_claims(self, run: FolderRun, conn: Connections) -> None:
        """'Copied' means present: copies the destination gave no UID for are looked for among the
        messages that arrived since the march listed the folder, in a fresh read-only view. Each is
        found by its SHA-256 (identical), or by its loose form (content.loose_form: stored altered,
        reported with what changed); a copy found neither way was acknowledged but is not held:
        a failure with that reason, and the next run does not count it as copied."""
        ckpt = self.ctx.ckpt
        claims = run.take_claimed()
        if not claims or ckpt is None:
            return
        fp, dst = run.fp, conn.dst()
        st = conn.select_dst(fp.destination, readonly=True)
        if st.uidvalidity != run.dst_uidvalidity and run.dst_messages == 0:
            # A folder empty when listed may get its UIDVALIDITY with its first message (imap4d
            # keeps it in the first message of an mbox): the copies are recorded under the new one.
            run.dst_uidvalidity = st.uidvalidity
        known = {r.dst_uid for r in ckpt.rows(fp.source, run.src_uidvalidity, fp.destination).values()
                 if r.dst_uid is not None}
        arrived = [m for m in dst.list_messages() if m.uid >= run.dst_uidnext and m.uid not in known]
        held = Held.read(dst, arrived, self.opts, exact=True)
        found, rest = [], []
        for intent, shape, loosely in claims:
            uid = held.take_exact(intent.sha256)
            if uid is None:
                rest.append((intent, shape, loosely))
            else:
                found.append((intent, uid))
        self.ledger.confirm(run, found)
        self.ledger.served_cut(run, found)
        with run.lock:  # their dates are checked next, in a session of their own (ending._check_dates)
            run.dated.extend((i, uid, True) for i, uid in found if date_at_risk(i.date))
        for intent, shape, loosely in rest:
            hit = held.take_loose(loosely)
            if hit is not None:
                self.ledger.altered(run, intent, hit[0], describe_change(shape, hit[1]))
                continue
            self.ledger.failed(run, intent, "the destination answered OK to the APPEND but does not hold the message",
                               copied=True)


class Held:
    """Destination messages read for their content, to be found again by it: by SHA-256
    (identical) and by loose form (altered: the stored bytes are kept to say what changed).
    Each message is found at most once."""

    def __init__(self) -> None:
        self._exact: dict[str, list[int]] = {}
        self._loose: dict[str, list[tuple[int, bytes]]] = {}
        self._taken: set[int] = set()

    @classmethod
    def read(cls, dst: Store, metas: list[MessageMeta], opts: EngineOptions, exact: bool) -> Held:
        """These messages of the folder selected on dst; exact: indexed by SHA-256 as well. A
        store that never alters what it stores (Capabilities.fingerprints) holds no altered copy:
        only its SHA-256s are asked for, and only if exact."""
        held = cls()
        if dst.capabilities.fingerprints:
            for uid, digest in stored_digests(dst, metas, opts).items() if exact else ():
                held._exact.setdefault(digest, []).append(uid)
            return held
        for batch in batches(metas, opts.batch_bytes, opts.batch_count):
            for msg in intact(dst.fetch([m.uid for m in batch])):
                if exact:
                    held._exact.setdefault(fingerprint(msg.body), []).append(msg.meta.uid)
                held._loose.setdefault(loose_digest(msg.body), []).append((msg.meta.uid, msg.body))
        return held

    def __bool__(self) -> bool:
        return bool(self._loose)

    def take_exact(self, digest: str) -> int | None:
        uid = next((u for u in self._exact.get(digest, ()) if u not in self._taken), None)
        if uid is not None:
            self._taken.add(uid)
        return uid

    def take_loose(self, digest: str) -> tuple[int, bytes] | None:
        """(UID, stored bytes) of a message with this loose digest, not taken yet."""
        hit = next(((u, b) for u, b in self._loose.get(digest, ()) if u not in self._taken), None)
        if hit is not None:
            self._taken.add(hit[0])
        return hit


def stored_digests(dst: Store, metas: list[MessageMeta], opts: EngineOptions) -> dict[int, str]:
    """{uid: SHA-256} of these messages of the folder selected on dst that it holds intact: the
    store's own record where it keeps one (Capabilities.fingerprints), else each body read (in
    batches: memory stays bounded) and hashed."""
    if dst.capabilities.fingerprints:
        return cast(Fingerprinted, dst).fingerprints([m.uid for m in metas])
    out: dict[int, str] = {}
    for batch in batches(metas, opts.batch_bytes, opts.batch_count):
        out.update((msg.meta.uid, fingerprint(msg.body)) for msg in intact(dst.fetch([m.uid for m in batch])))
    return out
