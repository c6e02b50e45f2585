"""POP3 has no INTERNALDATE: it is derived from the headers (pure function); message bodies are read
by migrator's own reader (lines of any length, bytes as served)."""

import io

import pytest

from migrator.stores.pop3 import _headers, date_from_headers, read_multiline, uid_from_uidl


def test_newest_received_wins_over_date():
    h = (b"Received: from b by c;\r\n Tue, 02 Jun 2020 10:11:12 +0200\r\n"
         b"Received: from a by b; Mon, 01 Jun 2020 09:00:00 +0000\r\nDate: Sun, 31 May 2020 08:00:00 -0700\r\n")
    assert date_from_headers(h) == "02-Jun-2020 10:11:12 +0200"


def test_date_header_then_nothing():
    assert date_from_headers(b"Date: Sun, 31 May 2020 08:00:00 -0700\r\n") == "31-May-2020 08:00:00 -0700"
    assert date_from_headers(b"Subject: no dates\r\nDate: garbage\r\n") == ""


def test_uid_from_uidl_is_stable_and_distinct():
    assert uid_from_uidl(b"abc") == uid_from_uidl(b"abc")
    assert len({uid_from_uidl(str(i).encode()) for i in range(10000)}) == 10000


def test_multiline_reader_keeps_lines_of_any_length_and_their_ends():
    long = b"x" * 100_000
    served = b"Subject: a\r\n\r\n" + long + b"\r\n..dot-stuffed\r\nbare LF\nlast\r\n.\r\nNEXT"
    f = io.BytesIO(served)
    assert read_multiline(f) == b"Subject: a\r\n\r\n" + long + b"\r\n.dot-stuffed\r\nbare LF\nlast\r\n"
    assert f.read() == b"NEXT"  # stops right after the terminating line


def test_multiline_reader_raises_on_a_cut_connection():
    with pytest.raises(EOFError):
        read_multiline(io.BytesIO(b"Subject: a\r\n\r\nbody cut he"))


def test_headers_end_at_the_first_empty_line():
    assert _headers(b"A: 1\r\nB: 2\r\n\r\nDate: not a header\r\n") == b"A: 1\r\nB: 2"
    assert _headers(b"A: 1\nB: 2\n\nbody\n") == b"A: 1\nB: 2"
    assert _headers(b"\r\nDate: body only\r\n") == b""
    assert _headers(b"A: 1\r\nno end") == b"A: 1\r\nno end"
