"""Filters (--since, --before, --min-size, --max-size): parsing, the day rule, the march, and the
real Engine on memory stores: a filtered run copies the window, reports the rest as skipped, keeps
no watermark over them, and a later run without filters copies the rest once."""
from __future__ import annotations

from collections import Counter
from datetime import date

import pytest

from migrator.accounts import parse_endpoint
from migrator.checkpoint import Checkpoint
from migrator.engine.copy import Engine, EngineOptions
from migrator.engine.march import decide
from migrator.errors import UsageError
from migrator.filters import Filters, internal_day, parse_day, parse_size
from migrator.naming import INBOX
from migrator.plan import FolderPlan, Plan
from migrator.plan_io import read_plan, write_plan
from migrator.runner import check_filters
from migrator.stats import Stats
from migrator.stores.base import MessageMeta
from migrator.stores.memory import MemoryServer

FAST = {"workers": 2, "batch_count": 2, "chunk_messages": 3, "backoff_base": 0.001, "backoff_max": 0.01,
        "in_flight_grace": 0.0}


@pytest.mark.parametrize("text, size", [("300", 300), ("1K", 1024), ("10M", 10 * 1024**2), ("2g", 2 * 1024**3),
                                        ("1.5K", 1536), ("25MB", 25 * 1024**2), ("4KiB", 4096)])
def test_sizes_are_1024_based(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "10X", "-1K", "1 0M"])
def test_a_bad_size_is_a_usage_error(text):
    with pytest.raises(UsageError, match="expected a size"):
        parse_size(text, "--max-size")


def test_days_are_read_in_iso_or_imap_form():
    assert parse_day("2024-01-31") == parse_day("31-Jan-2024") == parse_day("31-jan-2024") == date(2024, 1, 31)
    for bad in ("2024-02-30", "31/01/2024", "32-Jan-2024", "yesterday"):
        with pytest.raises(UsageError, match="expected a day"):
            parse_day(bad, "--since")


def test_the_day_is_the_one_written_in_the_internaldate_whatever_its_zone():
    # 23:30 at -0500 is the next day in UTC: SEARCH's day is the written one
    assert internal_day("31-Dec-2023 23:30:00 -0500") == date(2023, 12, 31)
    assert internal_day(" 1-Jan-2024 00:10:00 +1400") == date(2024, 1, 1)
    assert internal_day("") is None and internal_day("garbage") is None


def meta(uid: int, size: int = 100, day: str = "15-Mar-2024 12:00:00 +0000", flags=()) -> MessageMeta:
    return MessageMeta(uid, size, tuple(flags), day)


def test_since_is_inclusive_and_before_exclusive_as_imap_search():
    f = Filters.parse(since="2024-03-10", before="2024-03-20")
    assert f.reason(meta(1, day="10-Mar-2024 00:00:00 +0000")) is None  # SINCE: the day itself is in
    assert f.reason(meta(2, day="19-Mar-2024 23:59:59 -1200")) is None
    assert f.reason(meta(3, day="09-Mar-2024 23:59:59 +0000")) == "received before --since 2024-03-10"
    assert f.reason(meta(4, day="20-Mar-2024 00:00:00 +0000")) == "received on or after --before 2024-03-20"


def test_min_and_max_size_are_inclusive():
    f = Filters.parse(min_size="1K", max_size="2K")
    assert f.reason(meta(1, 1024)) is None and f.reason(meta(2, 2048)) is None
    assert f.reason(meta(3, 1023)) == "smaller than --min-size 1K"
    assert f.reason(meta(4, 2049)) == "larger than --max-size 2K"


def test_an_empty_window_is_refused():
    with pytest.raises(UsageError, match="leave no day"):
        Filters.parse(since="2024-03-10", before="2024-03-10")
    with pytest.raises(UsageError, match="larger than --max-size"):
        Filters.parse(min_size="2M", max_size="1M")


def test_filters_leave_settled_messages_alone_and_do_not_send_what_is_too_big():
    """A message copied earlier stays 'already' though outside the window; one over the
    destination's limit is reported, not sent."""
    from migrator.checkpoint import DONE, Row

    src = [meta(1, 50), meta(2, 5000), meta(3, 50, "01-Jan-2020 00:00:00 +0000"), meta(4, 900)]
    rows = {3: Row(3, 7, 9, 50, "x" * 64, (), DONE, None)}
    dec = decide(src, [meta(9, 50, "01-Jan-2020 00:00:00 +0000")], rows, 7, include_deleted=False,
                 sync_flags=True, retry_failed=False, filters=Filters.parse(since="2024-01-01", max_size="1K"),
                 size_limit=800)
    assert dec.already == 1
    assert dec.filtered == Counter({"larger than --max-size 1K": 1})
    assert [uid for uid, _ in dec.too_big] == [4] and "its limit is 800" in dec.too_big[0][1]
    assert [m.uid for m in dec.to_copy] == [1]


def written(plan: Plan, tmp_path) -> tuple[str, str]:
    """The plan written to a file: (its path, its text)."""
    path = str(tmp_path / "p.toml")
    write_plan(plan, path)
    with open(path) as fh:
        return path, fh.read()


def edited(path: str, text: str, old: str, new: str) -> None:
    with open(path, "w") as fh:
        fh.write(text.replace(old, new))


def test_filters_travel_in_the_plan_file(tmp_path):
    plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                [FolderPlan(INBOX, INBOX)], filters=Filters.parse(since="2024-01-01", max_size="10M"))
    path, text = written(plan, tmp_path)
    assert '[filters]\nsince = "2024-01-01"\nmax_size = "10M"' in text
    assert read_plan(path).filters == plan.filters
    edited(path, text, '"10M"', '"ten"')
    with pytest.raises(UsageError, match=r"p.toml:\d+: max_size 'ten'"):
        read_plan(path)


def test_filters_with_delete_extra_or_a_pop3_source_are_refused():
    plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                filters=Filters.parse(max_size="1M"))
    with pytest.raises(UsageError, match="--delete-extra cannot be used with filters"):
        check_filters(plan, delete_extra=True)
    check_filters(plan, delete_extra=False)
    pop = Plan(parse_endpoint("pop3://a@src.example"), parse_endpoint("imap://b@dst.example"),
               filters=Filters.parse(since="2024-01-01"))
    with pytest.raises(UsageError, match="POP3"):
        check_filters(pop, delete_extra=False)


# -- the Engine on memory stores --------------------------------------------------------------

MESSAGES = [  # (day, size of the body's filler)
    ("05-Jan-2024 10:00:00 +0000", 10), ("31-Jan-2024 23:30:00 -0500", 10), ("01-Feb-2024 00:00:00 +0000", 10),
    ("15-Feb-2024 09:00:00 +0100", 4000), ("29-Feb-2024 12:00:00 +0000", 10), ("01-Mar-2024 00:00:00 +0000", 10),
]


def body(i: int, filler: int) -> bytes:
    return f"Subject: m{i}\r\nMessage-ID: <m{i}@x>\r\n\r\n".encode() + b"x" * filler + b"\r\n"


def source() -> MemoryServer:
    server = MemoryServer()
    server.create(("Box",))
    for folder in (INBOX, ("Box",)):
        for i, (day, filler) in enumerate(MESSAGES):
            server.deliver(folder, body(i, filler), ("\\Seen",), day)
    return server


def run(src: MemoryServer, dst: MemoryServer, state: str, filters: Filters | None = None) -> Stats:
    plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                [FolderPlan(f, f) for f in src.names()], filters=filters or Filters())
    ckpt = Checkpoint(state)
    try:
        ckpt.bind("a@src.example", "b@dst.example")
        return Engine(plan, src.connect, dst.connect, ckpt, EngineOptions(**FAST), Stats(), None).run()
    finally:
        ckpt.close()


def held(server: MemoryServer, folder) -> Counter:
    return Counter(server.contents(folder).values())


def test_a_filtered_run_copies_the_window_and_a_later_run_the_rest_once(tmp_path):
    src, dst, state = source(), MemoryServer(), str(tmp_path / "s.sqlite")
    window = Filters.parse(since="2024-02-01", before="2024-03-01", max_size="1K")
    stats = run(src, dst, state, window)
    assert stats.ok and stats.total("copied") == 4
    for folder in (INBOX, ("Box",)):  # Feb 1 and Feb 29 only: the 4 KB message of Feb 15 is too big
        want = {m for m in held(src, folder) if m[2][:6] in ("01-Feb", "29-Feb")}
        assert set(held(dst, folder)) == want and sum(held(dst, folder).values()) == 2
    assert stats.total_skipped() == Counter({"filtered out: received before --since 2024-02-01": 4,
                                             "filtered out: larger than --max-size 1K": 2,
                                             "filtered out: received on or after --before 2024-03-01": 2})
    # A rerun with the same filters finds both folders changed by nobody, and still reports the skips:
    # a filtered folder keeps no watermark, so it is marched again rather than taken as complete.
    again = run(src, dst, state, window)
    assert again.total("copied") == 0 and again.total("already") == 4 and sum(again.total_skipped().values()) == 8
    rest = run(src, dst, state)
    assert rest.ok and rest.total("copied") == 8 and rest.total("already") == 4 and not rest.total_skipped()
    for folder in (INBOX, ("Box",)):
        assert held(dst, folder) == held(src, folder)  # every message once: no duplicates
    assert run(src, dst, state).total("copied") == 0


def test_messages_over_the_destinations_limit_are_reported_not_sent(tmp_path):
    src, dst = source(), MemoryServer()
    dst_store = dst.connect
    def limited():
        store = dst_store()
        store.capabilities.max_append_size = 1000
        return store
    plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                [FolderPlan(INBOX, INBOX)])
    ckpt = Checkpoint(str(tmp_path / "s.sqlite"))
    try:
        ckpt.bind("a@src.example", "b@dst.example")
        stats = Engine(plan, src.connect, limited, ckpt, EngineOptions(**FAST), Stats(), None).run()
    finally:
        ckpt.close()
    assert [(f.folder, f.uid) for f in stats.failures] == [("INBOX", 4)]
    assert "larger than the destination accepts" in stats.failures[0].reason
    assert stats.total("copied") == 5 and len(dst.contents(INBOX)) == 5
