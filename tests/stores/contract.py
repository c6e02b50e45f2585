"""The Store contract (migrator/stores/base.py), as tests every store runs: what the engine may rely on.

A store's own test module subclasses ReadContract (read-only stores: POP3) or StoreContract and
gives a fixture `ends` (a fresh, empty account: how to open connections to it, how to seed or
delete from outside). Where a real server cannot hold something, the subclass states it once in
the expectations below, with why; each such difference is then asserted (the message is changed,
the keywords are refused), never skipped.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from migrator.digest import fingerprint
from migrator.engine.content import loose_form
from migrator.engine.verify import date_instant
from migrator.errors import FolderError, MessageRejected
from migrator.naming import INBOX, Folder
from migrator.stores import calls
from migrator.stores.base import AppendItem, Store, normalize_flags
from tests.stores.corpus import HARD, KEYWORDS, PLAIN, SIMPLE, Sample

MISSING: Folder = ("No such folder",)

@dataclass
class Ends:
    """One fresh, empty account of the store under test."""

    open: Callable[[], Store]  # one more connection to it
    # Store messages in a folder from outside (a read-only store's only way to get any); None:
    # through the store's own append().
    seed: Callable[[Folder, list[Sample]], None] | None = None
    # Delete a folder from outside (the Store interface has no call for it).
    delete_folder: Callable[[Folder], None] | None = None
    # A message the store refuses (a NO to its APPEND: MessageRejected); None: it refuses none.
    refused: AppendItem | None = None


class CoreOnly:
    """The same connection, its Pipelined methods hidden: stores.calls then falls back on the core."""

    def __init__(self, store: Store):
        self._store = store
        self.capabilities = dataclasses.replace(store.capabilities, pipelined=False)
        self.separator = store.separator

    def __getattr__(self, name):
        return getattr(self._store, name)


class ReadContract:
    """What every store promises, read-only stores included."""

    # Hard messages (corpus.HARD) the store serves as they were stored; each of the others (not
    # refused) is asserted to come back changed.
    holds: frozenset[str] = frozenset(HARD)
    # Hard messages the store refuses (MessageRejected): a writable store's only.
    refuses: frozenset[str] = frozenset()
    # "exact": BODY[] is the bytes stored; "loose": equal after content.loose_form (an mbox server
    # adds and re-spaces header fields: GNU imap4d).
    served = "exact"

    @pytest.fixture
    def ends(self) -> Ends:
        raise NotImplementedError("the store's test module gives its ends")

    @pytest.fixture
    def connect(self, ends):
        """connect() -> one more connection to the account, closed at the test's end."""
        opened: list[Store] = []

        def connect() -> Store:
            opened.append(ends.open())
            return opened[-1]

        yield connect
        for store in opened:
            store.close()

    @pytest.fixture
    def store(self, connect):
        return connect()

    # -- helpers -----------------------------------------------------------------------------

    def seeded(self, ends: Ends, connect, folder: Folder, samples: list[Sample]) -> tuple[Store, list[int]]:
        """A connection opened on a folder holding these samples (seeded first from outside where
        the store cannot write: a POP3 session sees the maildrop as it was at login); their UIDs."""
        if ends.seed is None:
            store = connect()
            return store, self.put(store, folder, samples)
        ends.seed(folder, samples)
        store = connect()
        uids = [m.uid for m in self.listing(store, folder)]
        assert len(uids) == len(samples)
        return store, uids

    def put(self, store: Store, folder: Folder, samples: list[Sample]) -> list[int]:
        """APPEND samples to a folder (created if need be: INBOX too, a new archive has none);
        their UIDs, in order (where the store gives none: the folder's from its UIDNEXT before)."""
        if folder not in {f.name for f in store.list_folders()}:
            store.create_folder(folder)
        uidnext = store.status(folder).uidnext
        uids = store.append(folder, [s.item() for s in samples])
        if None not in uids:
            return uids
        new = [m.uid for m in self.listing(store, folder) if m.uid >= uidnext]
        assert len(new) == len(samples), (new, samples)
        return new

    @staticmethod
    def listing(store: Store, folder: Folder):
        store.select(folder)
        return store.list_messages()

    def same_bytes(self, got: bytes, sent: bytes) -> bool:
        return got == sent if self.served == "exact" else loose_form(got) == loose_form(sent)

    # -- folders -------------------------------------------------------------------------------

    def test_a_folder_with_messages_is_listed_and_selectable(self, ends, connect):
        store, _uids = self.seeded(ends, connect, INBOX, PLAIN[:1])
        assert next(f for f in store.list_folders() if f.name == INBOX).selectable
        st = store.select(INBOX)
        assert st.uidvalidity > 0 and st.messages == 1

    def test_a_missing_folder_raises_folder_error(self, store):
        with pytest.raises(FolderError):
            store.status(MISSING)
        with pytest.raises(FolderError):
            store.select(MISSING)

    # -- messages --------------------------------------------------------------------------------

    def test_status_select_and_listing_agree(self, ends, connect):
        store, uids = self.seeded(ends, connect, INBOX, SIMPLE)
        st = store.status(INBOX)
        assert st.messages == len(SIMPLE) and st.uidvalidity > 0
        assert same_folder_state(store.select(INBOX), st)
        listed = [m.uid for m in store.list_messages()]  # in the store's order (POP3: the maildrop's)
        assert sorted(listed) == sorted(uids) == sorted(set(uids))
        if st.uidnext:  # 0: the store cannot tell (POP3)
            assert st.uidnext > max(uids)

    def test_list_messages_by_uids_gives_exactly_those(self, ends, connect):
        store, uids = self.seeded(ends, connect, INBOX, SIMPLE)
        store.select(INBOX)
        wanted = [uids[3], uids[1]]
        assert sorted(m.uid for m in store.list_messages(wanted + [max(uids) + 1000])) == sorted(wanted)
        assert store.list_messages([]) == []

    def test_fetch_gives_the_bytes_stored_and_their_size(self, ends, connect):
        samples = SIMPLE + [s for name, s in HARD.items() if name not in self.refuses]
        store, uids = self.seeded(ends, connect, INBOX, samples)
        store.select(INBOX)
        listed = {m.uid: m for m in store.list_messages()}
        got = {m.meta.uid: m for m in store.fetch([*uids, max(uids) + 1000])}
        assert sorted(got) == sorted(uids)  # an unknown UID is left out
        for uid, sample in zip(uids, samples, strict=True):
            body = got[uid].body
            assert got[uid].meta.size == len(body), sample.name
            if store.capabilities.exact_sizes:
                assert listed[uid].size == len(body), sample.name
            kept = sample.name not in HARD or sample.name in self.holds
            assert self.same_bytes(body, sample.body) == kept, (sample.name, body[:300])
        for name in self.refuses:
            with pytest.raises(MessageRejected):
                store.append(INBOX, [HARD[name].item()])
        assert store.status(INBOX).messages == len(samples)

    def test_fetch_does_not_set_seen_and_gives_the_dates_a_listing_leaves_out(self, ends, connect):
        store, uids = self.seeded(ends, connect, INBOX, PLAIN[:1])
        before = self.listing(store, INBOX)
        fetched = list(store.fetch(uids))
        assert self.listing(store, INBOX) == before
        for meta, msg in zip(before, fetched, strict=True):
            assert meta.internaldate or date_instant(msg.meta.internaldate) is not None

    def test_another_connection_sees_the_same_uids(self, ends, connect):
        store, uids = self.seeded(ends, connect, INBOX, SIMPLE)
        validity = store.status(INBOX).uidvalidity
        if store.capabilities.sessions == 1:  # one session at a time (a POP3 maildrop lock)
            store.close()
        other = connect()
        assert other.status(INBOX).uidvalidity == validity
        assert sorted(m.uid for m in self.listing(other, INBOX)) == sorted(uids)

    # -- stores.calls: the Pipelined calls, and their fallbacks on the core ---------------------------

    def test_calls_give_the_answers_of_the_core(self, ends, connect):
        """Each Pipelined call through stores.calls: the store's own (if it has them) and the
        fallback on its core give the same answers, and those are the core calls' answers."""
        store, uids = self.seeded(ends, connect, INBOX, SIMPLE)
        core = CoreOnly(store)
        st = store.status(INBOX)

        def both(call, *args, **kwargs):
            own, fallback = call(store, *args, **kwargs), call(core, *args, **kwargs)
            assert own == fallback, call.__name__
            return own

        assert both(calls.statuses, [INBOX, MISSING]) == {INBOX: st}
        opened = both(calls.select_and_list, INBOX, expect=len(uids))
        assert same_folder_state(opened[0], st) and opened[1] == store.list_messages()
        checked = both(calls.list_with_status, INBOX, uids[:2], read_back=uids[1:3])
        assert sorted(m.uid for m in checked.metas) == sorted(uids[:2])
        assert checked.status == st and checked.refused is None
        served = {m.meta.uid: m.body for m in store.fetch(uids[1:3])}
        if store.capabilities.fingerprints:  # read back by the SHA-256s it keeps, no body served
            assert checked.digests == {uid: fingerprint(body) for uid, body in served.items()} and not checked.bodies
            assert store.fingerprints(uids) == {m.meta.uid: fingerprint(m.body) for m in store.fetch(uids)}
        else:
            assert checked.bodies == served
        checked, opened = both(calls.check_then_open, INBOX, uids, INBOX)
        assert checked.metas == opened[1] == store.list_messages()
        checked, failed = calls.check_then_open(store, INBOX, uids[:1], MISSING)
        assert [m.uid for m in checked.metas] == uids[:1] and isinstance(failed, FolderError)
        store.select(INBOX)  # the failed SELECT left none selected
        checked, failed_too = calls.check_then_open(core, INBOX, uids[:1], MISSING)
        assert [m.uid for m in checked.metas] == uids[:1] and isinstance(failed_too, FolderError)


def same_folder_state(a, b) -> bool:
    """Whether a SELECT's and a STATUS's answers agree on what both tell (SELECT has no SIZE).
    UIDNEXT 0 is "not said" (Courier's SELECT leaves it out)."""
    return ((a.uidvalidity, a.messages) == (b.uidvalidity, b.messages)
            and (not a.uidnext or not b.uidnext or a.uidnext == b.uidnext))


class ReadOnlyContract(ReadContract):
    """A read-only store (capabilities.writable False): every call that writes raises FolderError."""

    def test_says_it_is_read_only_and_refuses_every_write(self, ends, connect):
        store, uids = self.seeded(ends, connect, INBOX, PLAIN[:1])
        assert not store.capabilities.writable
        store.select(INBOX)
        for write in (lambda: store.create_folder(("New",)), lambda: store.subscribe(INBOX),
                      lambda: store.append(INBOX, [PLAIN[1].item()]), lambda: store.set_flags(uids[0], ["\\Seen"], []),
                      lambda: store.expunge_uids(uids)):
            with pytest.raises(FolderError):
                write()
        assert [m.uid for m in self.listing(store, INBOX)] == uids


class StoreContract(ReadContract):
    """What every writable store promises besides."""

    # "exact": INTERNALDATE as given; "instant": the same instant, in the server's zone;
    # "wall-clock": the digits kept, the zone lost (GNU imap4d).
    dates = "exact"
    # Whether keywords are refused (MessageRejected on APPEND, FolderError on STORE); None: as
    # capabilities.keywords says.
    refuses_keywords: bool | None = None

    # True: a folder's UIDVALIDITY is a time in seconds (GNU imap4d, against RFC 3501): a folder
    # deleted and created again within a second gets the same one, and an APPEND after an EXPUNGE
    # may give the folder a new one (the time then; its UIDs stay). Asserted never to go back.
    uidvalidity_from_the_clock = False
    # True: STATUS of the folder this connection has selected leaves out its own APPENDs since the
    # SELECT (Courier, until a NOOP or another SELECT).
    status_lags_own_appends = False
    # False: an APPEND to the folder this connection selected read-only is refused (Courier).
    appends_to_a_folder_selected_read_only = True

    def keywords_refused(self, store: Store) -> bool:
        return not store.capabilities.keywords if self.refuses_keywords is None else self.refuses_keywords

    # -- folders -------------------------------------------------------------------------------

    def test_create_subscribe_and_status_of_a_new_folder(self, store):
        store.create_folder(("Contract", "Sub"))
        listed = {f.name: f for f in store.list_folders()}
        assert ("Contract", "Sub") in listed and listed[("Contract", "Sub")].selectable
        if store.separator is not None:  # a hierarchy: the parent exists too
            assert ("Contract",) in listed
        st = store.status(("Contract", "Sub"))
        assert st.messages == 0 and st.uidvalidity > 0 and st.uidnext >= 1
        store.subscribe(("Contract", "Sub"))
        assert {f.name: f for f in store.list_folders()}[("Contract", "Sub")].subscribed

    def test_creating_a_folder_that_exists_is_no_error(self, store):
        """As Pipelined.create_folders answers it (None: created or already there), and the folder
        kept: its message, its UIDVALIDITY (a message in it: imap4d gives an empty mbox the time)."""
        store.create_folder(("Twice",))
        self.put(store, ("Twice",), [PLAIN[1]])
        validity = store.status(("Twice",)).uidvalidity
        store.create_folder(("Twice",))
        assert calls.create_folders(store, [(("Twice",), None)]) == {("Twice",): None}
        assert calls.create_folders(CoreOnly(store), [(("Twice",), None)]) == {("Twice",): None}
        assert store.status(("Twice",)).uidvalidity == validity
        assert store.status(("Twice",)).messages == 1

    def test_a_folder_created_again_gets_a_new_uidvalidity(self, ends, store):
        assert ends.delete_folder is not None, "the store's test says how a folder is deleted"
        store.create_folder(("Again",))
        first = store.status(("Again",)).uidvalidity
        ends.delete_folder(("Again",))
        store.create_folder(("Again",))
        if self.uidvalidity_from_the_clock:
            assert store.status(("Again",)).uidvalidity >= first
        else:
            assert store.status(("Again",)).uidvalidity != first

    def test_calls_create_and_subscribe_like_the_core(self, store):
        for n, side in enumerate((store, CoreOnly(store))):
            new = [(f"New{n}", "Sub"), (f"Other{n}",)]
            assert calls.create_folders(side, [(name, None) for name in new]) == dict.fromkeys(new)
            assert calls.subscribe_folders(side, new) == dict.fromkeys(new)
            assert all({f.name: f.subscribed for f in side.list_folders()}[name] for name in new)

    # -- APPEND ----------------------------------------------------------------------------------

    def test_append_returns_uids_exactly_with_uidplus(self, store):
        store.create_folder(("Box",))
        before = store.status(("Box",))
        uids = store.append(("Box",), [s.item() for s in SIMPLE])
        assert len(uids) == len(SIMPLE)
        if store.capabilities.uidplus:
            assert all(b > a for a, b in itertools.pairwise(uids)) and uids[0] >= before.uidnext
            assert sorted(m.uid for m in self.listing(store, ("Box",))) == uids
        else:
            assert uids == [None] * len(SIMPLE)
        after = store.status(("Box",))
        assert after.messages == len(SIMPLE)
        # imap4d gives an empty mbox the clock as UIDVALIDITY until its first message fixes one
        # (the engine allows for it: engine/readback.py).
        if self.uidvalidity_from_the_clock:
            assert after.uidvalidity >= before.uidvalidity
        else:
            assert after.uidvalidity == before.uidvalidity

    def test_append_to_the_folder_selected_read_only(self, store):
        """The engine appends to a destination folder it selected read-only where copies get no
        UID (no UIDPLUS: engine/jobs.py, appends_unseen)."""
        self.put(store, ("Ro",), PLAIN[:1])
        store.select(("Ro",), readonly=True)
        if not self.appends_to_a_folder_selected_read_only:
            with pytest.raises(MessageRejected):
                store.append(("Ro",), [PLAIN[1].item()])
            return
        store.append(("Ro",), [PLAIN[1].item()])
        assert store.status(("Ro",)).messages == 2

    def test_append_leaves_the_selection_as_it_was(self, store):
        a = self.put(store, ("A",), PLAIN[:2])
        store.create_folder(("B",))
        store.select(("A",))
        store.append(("B",), [PLAIN[2].item()])
        assert [m.uid for m in store.list_messages()] == a
        assert all(self.same_bytes(m.body, s.body) for m, s in zip(store.fetch(a), PLAIN[:2], strict=True))

    def test_flags_and_keywords_round_trip(self, store):
        store.create_folder(("Flags",))
        store.append(("Flags",), [s.item() for s in PLAIN])
        store.append(("Flags",), [AppendItem(PLAIN[0].body, ("\\Seen", "\\Flagged"), PLAIN[0].date)])
        want = [normalize_flags(s.flags) for s in PLAIN] + [("\\Flagged", "\\Seen")]  # listed sorted
        if self.keywords_refused(store):
            with pytest.raises(MessageRejected):
                store.append(("Flags",), [KEYWORDS[0].item()])
            assert store.status(("Flags",)).messages == len(want)
        else:
            store.append(("Flags",), [KEYWORDS[0].item()])
            want.append(normalize_flags(KEYWORDS[0].flags))
        assert [m.flags for m in self.listing(store, ("Flags",))] == want

    def test_internaldate_round_trip(self, store):
        store.create_folder(("Dates",))
        store.append(("Dates",), [s.item() for s in PLAIN])
        got = [m.internaldate for m in self.listing(store, ("Dates",))]
        if self.dates == "exact":
            assert got == [s.date for s in PLAIN]
        elif self.dates == "instant":
            assert [date_instant(d) for d in got] == [date_instant(s.date) for s in PLAIN], got
        else:  # the wall-clock digits, "+0000"
            assert got == [s.date[:21] + "+0000" for s in PLAIN]

    def test_a_refused_append_says_what_it_stored(self, ends, store):
        """A refused APPEND of several messages stores none of them (MULTIAPPEND: RFC 3502's all or
        nothing; MessageRejected.stored is None), or, sent one APPEND at a time, exactly those
        before the refused one, which MessageRejected.stored lists: the engine confirms those and
        sends none of them again. (A store that refuses no message, Ends.refused None, has nothing
        to show here.)"""
        self.put(store, ("Refused",), PLAIN[:1])
        if ends.refused is None:
            return
        with pytest.raises(MessageRejected) as refused:
            store.append(("Refused",), [PLAIN[1].item(), ends.refused])
        stored = refused.value.stored
        if store.capabilities.multiappend:
            assert stored is None
        else:
            assert stored is not None and len(stored) == 1
        assert len(store.append(("Refused",), [PLAIN[2].item()])) == 1  # the connection still works
        assert len(self.listing(store, ("Refused",))) == 1 + len(stored or ()) + 1

    # -- STORE, EXPUNGE ---------------------------------------------------------------------------

    def test_set_flags_adds_and_removes(self, store):
        uids = self.put(store, ("Store",), PLAIN[1:3])
        store.select(("Store",), readonly=False)
        store.set_flags(uids[0], ["\\Flagged"], ["\\Seen"])
        store.set_flags(uids[1], [], ["\\Answered", "\\Seen"])
        if self.keywords_refused(store):
            with pytest.raises(FolderError):
                store.set_flags(uids[1], ["$Label1"], [])
            want = [("\\Flagged",), ("\\Flagged",)]
        else:
            store.set_flags(uids[1], ["$Label1"], [])
            want = [("\\Flagged",), ("$Label1", "\\Flagged")]
        assert [m.flags for m in self.listing(store, ("Store",))] == want

    def test_expunge_uids_removes_exactly_those(self, store):
        """Exactly the given UIDs go; a store that cannot be that precise (without UID EXPUNGE, when
        other messages are flagged \\Deleted) refuses with FolderError and removes none."""
        uids = self.put(store, ("Gone",), PLAIN)
        store.select(("Gone",), readonly=False)
        store.set_flags(uids[1], ["\\Deleted"], [])  # \Deleted, and not to be expunged
        try:
            store.expunge_uids([uids[0], uids[2]])
        except FolderError:
            assert not store.capabilities.uidplus
            assert [m.uid for m in self.listing(store, ("Gone",))] == uids
            store.select(("Gone",), readonly=False)
            store.set_flags(uids[1], [], ["\\Deleted"])
            store.expunge_uids([uids[0], uids[2]])  # with no other \Deleted message: done
            assert [m.uid for m in self.listing(store, ("Gone",))] == [uids[1], uids[3]]
            return
        left = self.listing(store, ("Gone",))
        assert [m.uid for m in left] == [uids[1], uids[3]]
        assert left[0].deleted

    def test_uids_strictly_increase_and_are_never_reused(self, store):
        uids = self.put(store, ("Uids",), PLAIN[:2])
        validity = store.status(("Uids",)).uidvalidity
        store.select(("Uids",), readonly=False)
        store.expunge_uids([uids[1]])
        again = self.put(store, ("Uids",), PLAIN[2:3])
        assert again[0] > uids[1]
        assert [m.uid for m in self.listing(store, ("Uids",))] == [uids[0], again[0]]
        st = store.status(("Uids",))
        assert st.messages == 2 and st.uidnext > again[0], (st, uids, again)
        assert st.uidvalidity >= validity if self.uidvalidity_from_the_clock else st.uidvalidity == validity

    def test_status_of_the_selected_folder_counts_this_connections_appends(self, store):
        """The engine asks STATUS of the folder it has just appended to, while it is selected
        (stores.calls.list_with_status at a folder's end: the watermark's base)."""
        self.put(store, ("Counted",), PLAIN[:1])
        store.select(("Counted",), readonly=False)
        store.append(("Counted",), [PLAIN[1].item()])
        if self.status_lags_own_appends:
            assert store.status(("Counted",)).messages == 1  # stale: safe (no watermark is kept)
            store.select(("Counted",))
        assert store.status(("Counted",)).messages == 2

    def test_the_selected_folder_is_the_one_read_and_changed(self, store):
        a = self.put(store, ("SelA",), PLAIN[:2])
        b = self.put(store, ("SelB",), PLAIN[2:3])
        store.select(("SelA",), readonly=False)
        store.select(("SelB",), readonly=False)
        assert [m.uid for m in store.list_messages()] == b
        assert self.same_bytes(next(iter(store.fetch(b))).body, PLAIN[2].body)
        store.set_flags(b[0], ["\\Flagged"], [])
        assert all("\\Flagged" not in m.flags for m in self.listing(store, ("SelA",)))
        assert [m.uid for m in store.list_messages()] == a
