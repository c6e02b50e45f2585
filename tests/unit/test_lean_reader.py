"""The lean FETCH reader stores exactly what imaplib's own reader stores, for every kind of line."""

from __future__ import annotations

import imaplib
import socket
import threading

import pytest

from migrator.stores.imap_wire import install_lean_reader

STREAM = (
    b"* 1 FETCH (UID 7 BODY[] {5}\r\nhello)\r\n"
    b"* 3 EXISTS\r\n"  # untagged, not FETCH: imaplib's reader
    b"* 2 FETCH (UID 8 BODY[] {0}\r\n)\r\n"  # empty literal
    b"* 2 FETCH (FLAGS (\\Seen))\r\n"  # unsolicited, no literal
    b"* 4 FETCH (BODY[HEADER] {3}\r\nabc BODY[TEXT] {4}\r\nwxyz UID 9)\r\n"  # two literals, UID last
    b'* 5 FETCH (UID 10 RFC822.SIZE 12 FLAGS () INTERNALDATE "14-Mar-2019 15:09:26 +0200")\r\n'
    b"* 1 EXPUNGE\r\n"
    b"* OK [HIGHESTMODSEQ 12] still here\r\n"
    b"A1 OK done\r\n"
)


def _connection(stream: bytes, use_lean: bool):
    a, b = socket.socketpair()
    imap = imaplib.IMAP4.__new__(imaplib.IMAP4)  # no connect(): fed from a socket pair
    imap.debug = 0
    imap._mode_ascii()
    imap.tagged_commands, imap.untagged_responses, imap.continuation_response = {}, {}, ""
    imap._cmd_log_len, imap._cmd_log_idx, imap._cmd_log = 10, 0, {}
    imap.tagre = imaplib.re.compile(rb"(?P<tag>A\d+) (?P<type>[A-Z]+) (?P<data>.*)", imaplib.re.ASCII)
    imap.sock, imap.file, imap.state = a, a.makefile("rb"), "SELECTED"
    if use_lean:
        install_lean_reader(imap)
    def serve() -> None:
        try:
            b.sendall(stream)
            b.shutdown(socket.SHUT_WR)  # then EOF, as from a server that went away
        except OSError:
            pass  # the reader gave up and closed first

    threading.Thread(target=serve, daemon=True).start()
    return imap, (a, b)


def _read(stream: bytes, use_lean: bool):
    imap, socks = _connection(stream, use_lean)
    try:
        imap.tagged_commands[b"A1"] = None
        result = imap._command_complete("FETCH", b"A1")
        return result, imap.untagged_responses
    finally:
        for s in socks:
            s.close()


def test_same_result_as_imaplib():
    assert _read(STREAM, True) == _read(STREAM, False)
    (typ, _), untagged = _read(STREAM, True)
    assert typ == "OK" and untagged["FETCH"][0] == (b"1 (UID 7 BODY[] {5}", b"hello")
    assert untagged["EXISTS"] == [b"3"] and untagged["EXPUNGE"] == [b"1"]


@pytest.mark.parametrize("cut", [10, 30, len(STREAM) - 5])
def test_connection_closed_midway_is_an_abort(cut):
    with pytest.raises(imaplib.IMAP4.abort):
        _read(STREAM[:cut], True)


def test_bye_is_an_abort():
    with pytest.raises(imaplib.IMAP4.abort):
        _read(b"* 1 FETCH (UID 7 BODY[] {2}\r\nhi)\r\n* BYE shutting down\r\n", True)
