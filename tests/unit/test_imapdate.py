"""INTERNALDATE: written with its zone, read back as the same instant, from RFC 5322 dates too."""

from datetime import UTC, datetime, timedelta, timezone

from migrator.imapdate import date_instant, date_key, format_date, from_rfc5322, parse_date


def test_format_keeps_the_zone_and_writes_english_months():
    dt = datetime(2019, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-7, minutes=-30)))
    assert format_date(dt) == "04-Mar-2019 05:06:07 -0730"


def test_parse_round_trips_with_the_zone():
    text = "14-Mar-2019 15:09:26 +0200"
    dt = parse_date(text)
    assert dt is not None and dt.utcoffset() == timedelta(hours=2)
    assert format_date(dt) == text
    assert parse_date(" 7-Jul-2024 01:02:03 +0000") == datetime(2024, 7, 7, 1, 2, 3, tzinfo=UTC)


def test_a_naive_datetime_is_local_time():
    naive = datetime(2021, 6, 1, 12, 0, 0)
    assert date_instant(format_date(naive)) == naive.timestamp()


def test_the_same_instant_in_two_zones_compares_equal():
    assert date_instant("01-Jan-2024 01:00:00 +0100") == date_instant("01-Jan-2024 00:00:00 +0000")
    assert date_key("01-Jan-2024 01:00:00 +0100") == date_key("01-Jan-2024 00:00:00 +0000")


def test_what_is_not_an_internaldate():
    assert parse_date("") is None and date_instant("yesterday") is None
    assert date_key("yesterday") == "yesterday"


def test_from_rfc5322():
    assert from_rfc5322(" Tue, 02 Jun 2020 10:11:12 +0200") == "02-Jun-2020 10:11:12 +0200"
    assert from_rfc5322("2 Jun 2020 10:11:12 GMT") == "02-Jun-2020 10:11:12 +0000"
    assert from_rfc5322("Tue, 02 Jun 2020 10:11:12 -0000") == ""  # no zone known (RFC 5322 4.3)
    assert from_rfc5322("garbage") == ""
