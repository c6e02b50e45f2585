"""Pure functions, table-driven: URL parsing, folder names, APPENDUID, batching, log masking."""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter

import pytest

from migrator.accounts import parse_endpoint
from migrator.engine.batching import batches, one_batch
from migrator.engine.march import Wanted, pair_twins
from migrator.errors import UsageError
from migrator.logsafe import SecretMaskFilter
from migrator.naming import from_server, to_server
from migrator.stores.base import MessageMeta
from migrator.stores.imap_parse import parse_appenduid


@pytest.mark.parametrize(
    "url, scheme, user, host, port",
    [
        ("imaps://alice@mail.example.com", "imaps", "alice", "mail.example.com", 993),
        ("imap://bob@127.0.0.1:1143", "imap", "bob", "127.0.0.1", 1143),
        ("imaps://alice%40example.com@[::1]:10993", "imaps", "alice@example.com", "::1", 10993),
        ("pop3s://carol@pop.example.com", "pop3s", "carol", "pop.example.com", 995),
    ],
)
def test_parse_endpoint(url, scheme, user, host, port):
    ep = parse_endpoint(url)
    assert (ep.scheme, ep.user, ep.host, ep.port) == (scheme, user, host, port)


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("mail.example.com", "not an account URL"),
        ("ftp://a@b", "unknown scheme"),
        ("imaps://b.example.com", "no user name"),
        ("imaps://a:secret@b.example.com", "do not put the password"),
        ("imaps://a@b.example.com:99999", "port"),
        ("imaps://a@", "no host"),
    ],
)
def test_parse_endpoint_errors(url, fragment):
    with pytest.raises(UsageError) as e:
        parse_endpoint(url)
    assert fragment in str(e.value)
    assert "secret" not in str(e.value)


def test_loopback_rule():
    assert parse_endpoint("imap://a@127.0.0.5").is_loopback
    assert parse_endpoint("imap://a@[::1]").is_loopback
    assert parse_endpoint("imap://a@localhost").is_loopback
    assert not parse_endpoint("imap://a@10.0.0.1").is_loopback
    assert not parse_endpoint("imap://a@mail.example.com").is_loopback


@pytest.mark.parametrize(
    "server, sep, prefix, comps",
    [
        ("INBOX", ".", "INBOX.", ("INBOX",)),
        ("inbox", "/", "", ("INBOX",)),
        ("INBOX.Archive.2020", ".", "INBOX.", ("Archive", "2020")),
        ("Archive/2020", "/", "", ("Archive", "2020")),
        ("INBOX/Sub", "/", "", ("INBOX", "Sub")),
        ("Éléments envoyés", "/", "", ("Éléments envoyés",)),
    ],
)
def test_from_server(server, sep, prefix, comps):
    assert from_server(server, sep, prefix) == comps


@pytest.mark.parametrize(
    "comps, sep, prefix, server",
    [
        (("INBOX",), ".", "INBOX.", "INBOX"),
        (("Archive", "2020"), ".", "INBOX.", "INBOX.Archive.2020"),
        (("Archive", "2020"), "/", "", "Archive/2020"),
        (("a.b",), ".", "INBOX.", "INBOX.a_b"),  # never silently a subfolder
        (("a/b", "c"), "/", "", "a_b/c"),
        (("x", "y"), None, "", "x_y"),
    ],
)
def test_to_server(comps, sep, prefix, server):
    assert to_server(comps, sep, prefix) == server


@pytest.mark.parametrize(
    "text, uids",
    [
        ("[APPENDUID 38505 3955] APPEND completed", [3955]),
        ("[APPENDUID 1 5:7] Append completed.", [5, 6, 7]),
        ("[APPENDUID 1 5,9:10] ok", [5, 9, 10]),
        ("Append completed.", []),
    ],
)
def test_parse_appenduid(text, uids):
    assert parse_appenduid(text) == uids


def test_batches_bound_bytes_and_count():
    metas = [MessageMeta(i, size, (), "") for i, size in enumerate([10, 10, 10, 100, 5, 5, 5, 5])]
    out = [[m.uid for m in b] for b in batches(metas, max_bytes=30, max_count=3)]
    assert out == [[0, 1, 2], [3], [4, 5, 6], [7]]
    assert sum(len(b) for b in out) == len(metas)
    # a folder copied at once by the worker that listed it: only when it is one batch
    assert one_batch(metas[:3], 30, 3) and one_batch(metas[3:4], 30, 3)  # one message, however big
    assert not one_batch(metas[:4], 30, 3) and not one_batch(metas[4:], 30, 3) and not one_batch([], 30, 3)


@pytest.mark.parametrize(
    "line",
    [
        "> b'ABCD1 LOGIN alice \"s3cr3t-pw\"'",
        "> b'ABCD1 LOGIN alice s3cr3t-pw'",
        "> b'ABCD2 AUTHENTICATE PLAIN AGFsaWNlAHMzY3IzdC1wdw=='",
        "> b'AGFsaWNlAHMzY3IzdC1wdw=='",
    ],
)
def test_secret_mask_filter(line):
    rec = logging.LogRecord("imapclient", logging.DEBUG, __file__, 1, line, (), None)
    SecretMaskFilter().filter(rec)
    text = rec.getMessage()
    assert "s3cr3t-pw" not in text and "AGFsaWNlAHMzY3IzdC1wdw" not in text


@pytest.mark.parametrize(
    "line, expected",
    [
        (b'12 (UID 34 RFC822.SIZE 2345 FLAGS (\\Seen $X) INTERNALDATE " 4-Mar-2019 15:09:26 +0200")',
         (b"34", b"2345", b"\\Seen $X", b" 4-Mar-2019 15:09:26 +0200")),
        (b'1 (FLAGS () INTERNALDATE "14-Mar-2019 15:09:26 -0700" RFC822.SIZE 9 UID 7)',
         (b"7", b"9", b"", b"14-Mar-2019 15:09:26 -0700")),
        (b"5 (FLAGS (\\Seen))", None),  # unsolicited: skipped
    ],
)
def test_metadata_fetch_line(line, expected):
    from migrator.stores.imap_parse import _META_IN_ORDER, _META_LINE

    m = _META_LINE.search(line)
    assert (m.group("uid", "size", "flags", "date") if m else None) == expected
    # The one-pass pattern reads the items in the order asked, and only that order (the rest
    # falls back to the pattern above).
    fast = _META_IN_ORDER.match(line)
    in_order = line.startswith(b"12 (UID")
    assert (fast.group("uid", "size", "flags", "date") if fast else None) == (expected if in_order else None)


def test_checkpoint_flags_round_trip_through_json():
    from migrator.checkpoint import flags_from_json, flags_json

    for flags in [(), ("\\Seen",), ("$Label1", "\\Seen", "Ünïcode")]:
        assert flags_from_json(flags_json(flags)) == flags
    assert flags_json(("$X", "\\Seen")) == '["$X", "\\\\Seen"]'  # the form older state files hold


def test_uid_set_compacts_ranges():
    from migrator.stores.imap_parse import uid_set

    assert uid_set([10, 9, 1, 2, 3, 7]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


_DATE = b'"14-Mar-2019 15:09:26 +0200"'


def _meta(uid, body, flags=(), date="14-Mar-2019 15:09:26 +0200"):
    from migrator.stores.base import MessageMeta

    return MessageMeta(uid, len(body), flags, date)


@pytest.mark.parametrize(
    "data, fast, general",
    [
        ([(b"1 (UID 1 FLAGS (\\Seen \\Recent) INTERNALDATE " + _DATE + b" BODY[] {5}", b"hello"), b")",
          (b"2 (UID 9 FLAGS () INTERNALDATE " + _DATE + b" BODY[] {0}", b""), b")"],
         {1: (_meta(1, b"hello", ("\\Seen",)), b"hello"), 9: (_meta(9, b""), b"")}, "same"),
        # Cyrus puts FLAGS first; a MODSEQ may come along (CONDSTORE)
        ([(b"1 (FLAGS ($X) UID 1 MODSEQ (7) INTERNALDATE \" 4-Mar-2019 15:09:26 +0200\" BODY[] {5}", b"hello"), b")",
          b"3 (FLAGS (\\Seen))"],
         {1: (_meta(1, b"hello", ("$X",), "04-Mar-2019 15:09:26 +0200"), b"hello")}, "same"),
        ([None], {}, {}),  # nothing answered (all expunged)
        ([(b"1 (BODY[] {5}", b"hello"), b" UID 1 FLAGS () INTERNALDATE " + _DATE + b")"], None,  # items after the literal
         {1: (_meta(1, b"hello"), b"hello")}),
        ([b"1 (UID 1 FLAGS () INTERNALDATE " + _DATE + b" BODY[] NIL)"], None, {1: (_meta(1, b""), b"")}),  # no literal
    ],
)
def test_messages_from_fetch(data, fast, general):
    """The fast reader takes the usual forms and declines the rest, which the general parser reads;
    both give each message's flags, date and the size of its bytes."""
    from migrator.stores.imap_parse import messages_from_any_fetch, messages_from_fetch

    assert messages_from_fetch(data) == fast
    assert messages_from_any_fetch(data) == (fast if general == "same" else general)


def test_parse_status_answer():
    from migrator.stores.imap_parse import parse_status as _parse_status

    st = _parse_status([b'"Sent Items" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 5 HIGHESTMODSEQ 9)'])
    assert (st.messages, st.uidnext, st.uidvalidity, st.highestmodseq) == (3, 4, 5, 9)
    literal_name = _parse_status([(b"{3}", b"a b"), b" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 7)"])
    assert (literal_name.uidvalidity, literal_name.highestmodseq) == (7, None)
    assert _parse_status([]) is None


def test_status_answers_are_matched_by_mailbox_name():
    """Pipelined STATUS answers may arrive before an earlier command's completion: each is told
    apart by the name it carries (quoted, atom, literal, modified UTF-7; INBOX in any case)."""
    from migrator.stores.imap_parse import mailbox_key as _mailbox_key, status_of as _status_of, statuses_by_name as _statuses_by_name

    lines = [
        b'"Box/f2" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 20)',
        b'inbox (MESSAGES 9 UIDNEXT 10 UIDVALIDITY 90 HIGHESTMODSEQ 4)',
        (b"{3}", b"a b"), b" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 7)",
        b'"Entw&APw-rfe" (MESSAGES 5 UIDNEXT 6 UIDVALIDITY 50)',
        b'"Box/f1" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 10)',
        b'"broken" (MESSAGES 1)',  # no UIDVALIDITY: not an answer we can use
    ]
    got = {name: (st.messages, st.uidvalidity) for name, st in _statuses_by_name(lines).items()}
    assert got == {"Box/f1": (1, 10), "Box/f2": (2, 20), "INBOX": (9, 90), "a b": (1, 7), "Entwürfe": (5, 50)}
    assert _mailbox_key("Inbox") == "INBOX" and _mailbox_key("Inboxes") == "Inboxes"
    by_name = _statuses_by_name(lines)
    assert _status_of(by_name, "box/F1").uidvalidity == 10  # a case-insensitive server's own spelling
    assert _status_of(by_name, "Missing") is None
    one = _statuses_by_name([b'"Sent Items" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 5)'])
    assert _status_of(one, "Sent", alone=True).uidvalidity == 5 and _status_of(one, "Sent") is None
    two = _statuses_by_name([b'"Foo" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1)',
                             b'"foo" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 2)'])
    assert _status_of(two, "foo").uidvalidity == 2 and _status_of(two, "FOO") is None  # ambiguous: none


def test_both_sides_overlaps_the_calls_and_raises_after_both_are_done():
    import threading
    import time as _time

    from migrator.engine.pairs import both_sides

    started = threading.Event()

    def src():
        assert started.wait(5)  # the destination's call runs meanwhile, not after
        return "s"

    def dst():
        started.set()
        return "d"

    assert both_sides(src, dst) == ("s", "d")
    assert both_sides(lambda: 1, None) == (1, None)
    finished = []

    def slow_failing_dst():
        _time.sleep(0.2)
        finished.append("dst")
        raise OSError("dst failed")

    def failing_src():
        raise ValueError("src failed")

    with pytest.raises(ValueError, match="src failed"):  # the source's first, once both are done
        both_sides(failing_src, slow_failing_dst)
    assert finished == ["dst"]
    with pytest.raises(OSError, match="dst failed"):
        both_sides(lambda: 1, slow_failing_dst)


def test_workers_take_the_biggest_work_first():
    """Chunks by their bytes, marches by their folder's size from STATUS (or message count): a big
    folder's chunk goes before the marches of small folders (else, among a hundred small folders,
    it waits for all their marches and ends the run alone); a folder without STATUS first."""
    from migrator.engine.copy import Engine, EngineOptions
    from migrator.engine.jobs import ChunkJob, FolderRun, MarchJob
    from migrator.plan import FolderPlan, Plan
    from migrator.stores.base import FolderStatus

    folders = {name: FolderPlan((name,), (name,)) for name in ("Big", "Small", "Counted", "Unknown", "Inbox")}
    plan = Plan(parse_endpoint("imap://a@example.org"), parse_endpoint("imap://b@example.org"), list(folders.values()))
    engine = Engine(plan, open_src=None, open_dst=None, checkpoint=None, opts=EngineOptions())
    try:
        engine.ctx.src_status = {
            ("Big",): FolderStatus(1, messages=900, size=60_000_000),
            ("Small",): FolderStatus(1, messages=3, size=30_000),
            ("Counted",): FolderStatus(1, messages=100),  # no STATUS=SIZE: 100 typical messages
        }
        for name in ("Small", "Counted", "Unknown", "Big"):
            engine.scheduler.put(MarchJob(folders[name]))
        chunk = ChunkJob(FolderRun(folders["Inbox"], 1), [MessageMeta(i, 1_000_000, (), "") for i in range(13)])
        engine.scheduler.put(chunk)
        order = [engine.scheduler._q.get_nowait()[1] for _ in range(5)]
    finally:
        engine.ctx.dst_side.shutdown()
    assert [job.fp.source[0] if isinstance(job, MarchJob) else "chunk" for job in order] == [
        "Unknown", "Big", "chunk", "Counted", "Small"]


@pytest.mark.parametrize("body, suspect", [
    # UTF-8
    ("Subject: \u2014 \u201cquoted\u201d \u2019 \u00e9\u20ac\r\n\r\n\u4e2d\u6587 \U0001f600\r\n".encode(), False),
    (b"ab\x80cd", True),  # what Dovecot serves for a stored NUL
    (b"\x80 first", True),
    (b"plain ASCII", False),
    (b"5 \xe2\x80\x94 dash, then ab\x80", True),
])
def test_which_bodies_are_read_again_as_binary(body, suspect):
    """A 0x80 octet after an ASCII one never occurs in UTF-8 text: only such bodies cost the
    extra BINARY[] read that finds NUL octets a server served as 0x80."""
    from migrator.stores.imap_parse import nul_suspects

    assert nul_suspects({7: body}) == ([7] if suspect else [])


def test_nul_served_as_0x80_is_put_back_only_where_binary_differs_by_nul_alone():
    from migrator.stores.imap_parse import restore_nul

    bodies = {1: b"ab\x80cd", 2: b"ab\x80cd=3D", 3: b"ab\x80cd"}
    binary = {1: b"ab\x00cd", 2: b"ab\x00cd=", 3: b"ab\x80cd"}  # 2: BINARY[] decoded a part; 3: no NUL
    restored, notes = restore_nul(bodies, binary)
    assert restored == {1} and bodies == {1: b"ab\x00cd", 2: b"ab\x80cd=3D", 3: b"ab\x80cd"}
    assert list(notes) == [2] and "copied as served" in notes[2]


def test_read_ahead_serves_one_fetch_of_its_own_folder_then_is_gone():
    from migrator.stores.base import MessageMeta
    from migrator.stores.imap_wire import ReadAhead

    kept = {1: (MessageMeta(1, 1, (), ""), b"a"), 2: (MessageMeta(2, 1, (), ""), b"b")}
    ahead = ReadAhead()
    ahead.keep(("F",), dict(kept))
    assert ahead.take(("F",), [1, 2]) == kept
    assert ahead.take(("F",), [1]) is None  # served once
    ahead.keep(("F",), dict(kept))
    assert ahead.take(("F",), [1, 3]) is None and ahead.take(("F",), [1]) is None  # not all held: dropped
    ahead.keep(("F",), dict(kept))
    assert ahead.take(("G",), [1]) is None  # another folder
    ahead.keep(("F",), dict(kept))
    ahead.drop()  # a folder opening, close()
    assert ahead.take(("F",), [1]) is None


# -- identical messages: which source twin adopts which destination copy ----------------------------


def _day(d: int, zone: str = "+0000") -> str:
    return f"{14 + d:02d}-Mar-2019 13:09:26 {zone}"


def _twin(uid: int, day: int, flags=(), claim: bool = False, digest: str = "h") -> Wanted:
    return Wanted(MessageMeta(uid, 100, tuple(sorted(flags)), _day(day)), digest, claim)


def _copy(uid: int, day: int, flags=()) -> MessageMeta:
    return MessageMeta(uid, 100, tuple(sorted(flags)), _day(day))


def _paired(wanted, copies, digest="h") -> dict[int, int]:
    return {s: d.uid for s, d in pair_twins(wanted, {digest: copies}).items()}


def test_twins_are_paired_by_date_whatever_order_they_come_in():
    """Three identical messages with permuted dates on each side, the destination holding all
    three or two of them: each copy goes to the twin of its date, however the source messages were
    split into batches and chunks (any order of arrival, the same answer)."""
    sources = [_twin(1, 0), _twin(2, 1), _twin(3, 2)]
    for copies, expected in [([_copy(10, 2), _copy(11, 0), _copy(12, 1)], {1: 11, 2: 12, 3: 10}),
                             ([_copy(10, 2), _copy(12, 1)], {2: 12, 3: 10})]:
        for order in itertools.permutations(sources):
            for held in itertools.permutations(copies):
                assert _paired(order, list(held)) == expected


def test_more_source_twins_than_copies_the_copy_goes_to_the_twin_of_its_date():
    # The defect: the first twin (UID order) took the only copy, which had the third one's date.
    assert _paired([_twin(1, 0), _twin(2, 1), _twin(3, 2)], [_copy(10, 2)]) == {3: 10}
    assert _paired([_twin(1, 0), _twin(2, 1), _twin(3, 2)], [_copy(10, 1), _copy(11, 2)]) == {2: 10, 3: 11}


def test_fewer_source_twins_than_copies_the_one_of_its_date_is_taken():
    assert _paired([_twin(1, 1)], [_copy(10, 0), _copy(11, 1), _copy(12, 2)]) == {1: 11}


def test_flags_break_ties_and_dates_come_before_flags():
    same_day = [_twin(1, 0, ["\\Seen"]), _twin(2, 0)]
    assert _paired(same_day, [_copy(10, 0), _copy(11, 0, ["\\Seen"])]) == {1: 11, 2: 10}
    no_day_matches = [_twin(1, 5, ["\\Flagged"]), _twin(2, 6)]
    assert _paired(no_day_matches, [_copy(10, 7), _copy(11, 8, ["\\Flagged"])]) == {1: 11, 2: 10}
    # Matching flags first would pair 1 with 10 and leave both dates wrong.
    assert _paired([_twin(1, 0, ["\\Seen"]), _twin(2, 1)], [_copy(10, 1, ["\\Seen"]), _copy(11, 0)]) == {1: 11, 2: 10}


def test_twins_without_any_match_are_paired_in_uid_order():
    assert _paired([_twin(2, 3), _twin(1, 4)], [_copy(11, 5), _copy(10, 6)]) == {1: 10, 2: 11}


def test_the_same_instant_in_another_zone_is_the_same_date():
    moved = MessageMeta(10, 100, (), "14-Mar-2019 15:09:26 +0200")  # = _day(0)
    assert _paired([_twin(1, 1), _twin(2, 0)], [_copy(11, 3), moved]) == {2: 10, 1: 11}


def test_groups_of_other_bytes_are_paired_apart():
    wanted = [_twin(1, 0, digest="a"), _twin(2, 0, digest="b"), _twin(3, 0, digest="c")]
    pairs = pair_twins(wanted, {"a": [_copy(10, 1)], "b": [_copy(11, 0)], "x": [_copy(12, 0)]})
    assert {s: d.uid for s, d in pairs.items()} == {1: 10, 2: 11}


def test_claims_keep_their_copy_but_take_no_date_from_others():
    """A claim (copied earlier, no UID known) is paired even when the group is short of copies,
    without taking the copy of another twin's date when another copy is left for it."""
    assert _paired([_twin(1, 1), _twin(5, 0, claim=True)], [_copy(10, 1)]) == {5: 10}
    assert _paired([_twin(1, 1), _twin(5, 0, claim=True)], [_copy(10, 1), _copy(11, 3)]) == {1: 10, 5: 11}
    assert _paired([_twin(1, 0), _twin(5, 0, claim=True), _twin(6, 1, claim=True)], [_copy(10, 0), _copy(11, 1)]) \
        == {5: 10, 6: 11}


def test_twins_pairing_keeps_the_most_dates_possible():
    """Random groups: as many pairs as the smaller side, and as many with the same date as can be."""
    rnd = random.Random(7)
    for _ in range(300):
        sources = [_twin(i, rnd.randrange(4), rnd.sample(["\\Seen", "$A"], rnd.randrange(3)))
                   for i in range(rnd.randrange(1, 7))]
        copies = [_copy(100 + i, rnd.randrange(4), rnd.sample(["\\Seen", "$A"], rnd.randrange(3)))
                  for i in range(rnd.randrange(1, 7))]
        pairs = pair_twins(sources, {"h": copies})
        by_uid = {w.meta.uid: w.meta for w in sources}
        assert len(pairs) == min(len(sources), len(copies))
        assert len({d.uid for d in pairs.values()}) == len(pairs)
        src_days, dst_days = Counter(w.meta.internaldate for w in sources), Counter(m.internaldate for m in copies)
        best = sum(min(n, dst_days[day]) for day, n in src_days.items())
        assert sum(by_uid[s].internaldate == d.internaldate for s, d in pairs.items()) == best
