"""engine/content.py: what is read back, how a change is described, what counts as the same message
rewritten. The byte patterns are the ones measured on the real servers (README, server behaviour)."""
from __future__ import annotations

from migrator.digest import fingerprint
from migrator.engine.content import (
    LARGE,
    Shape,
    at_risk,
    describe_change,
    loose_form,
    loose_window,
    same_size_change,
    served_cut_short,
)

PLAIN = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody line\r\n"
EIGHT_BIT = b"From: a@example.com\r\nSubject: h\xc3\xa9llo\r\n\r\nbody line\r\n"


def test_only_same_size_risks_are_read_back():
    assert not at_risk(PLAIN)
    assert at_risk(EIGHT_BIT)  # Cyrus's munge8bit keeps the size
    assert at_risk(PLAIN + b"\x00")
    assert not at_risk(PLAIN.replace(b"\r\n", b"\n"))  # line ends change the size: the size check sees it
    assert at_risk(b"x" * LARGE)
    assert not at_risk(PLAIN + b"\x00", nul_free=True)  # the caller vouches there is no NUL: not scanned
    assert at_risk(EIGHT_BIT, nul_free=True)


def test_a_munged_header_is_described_and_matches_loosely():
    munged = EIGHT_BIT.replace(b"\xc3\xa9", b"XX")
    assert len(munged) == len(EIGHT_BIT)
    reason = describe_change(Shape.of(EIGHT_BIT), munged)
    assert "2 8-bit octet(s) in the header replaced" in reason
    assert loose_form(munged) == loose_form(EIGHT_BIT)
    assert fingerprint(munged) != fingerprint(EIGHT_BIT)


def test_mbox_rewrites_match_loosely_and_name_the_added_fields():
    sent = b"From sender@example.com Thu Mar 14 15:09:26 2019\nFrom:a@example.com\nSubject: x\n\nbody\n"
    served = b"From: a@example.com\r\nSubject: x\r\nX-UID: 7\r\nStatus: RO\r\n\r\nbody\r\n"
    assert loose_form(sent) == loose_form(served)
    assert "header field(s) added: status, x-uid" in describe_change(Shape.of(sent), served)
    low, high = loose_window(len(sent))
    assert low <= len(served) <= high


def test_a_line_end_added_at_the_end_matches_loosely():
    no_final = PLAIN.rstrip(b"\r\n")
    assert loose_form(no_final) == loose_form(PLAIN)
    assert "a line end added at the end" in describe_change(Shape.of(no_final), PLAIN)


def test_different_messages_stay_different():
    assert loose_form(PLAIN) != loose_form(PLAIN.replace(b"body line", b"body lime"))
    assert loose_form(PLAIN) != loose_form(PLAIN.replace(b"hello", b"hellO"))


def test_nul_and_0x80_are_one_fingerprint():
    """Dovecot serves a stored NUL as 0x80; Cyrus and Courier serve the NUL: the same message."""
    assert fingerprint(PLAIN + b"\x00") == fingerprint(PLAIN + b"\x80")
    assert fingerprint(PLAIN) != fingerprint(PLAIN + b"\x80")


def test_same_size_change_without_the_bytes():
    assert same_size_change(1234) == ("the destination server changed the message while storing it: "
                                      "other bytes than were sent, at the same size (1234)")


def _parts(n: int, closed: bool = True) -> bytes:
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(n))
    return (f"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"b\"\r\n\r\n"
            f"{parts}{'--b--' if closed else '--b'}\r\n").encode()


def test_a_message_served_cut_at_a_part_is_told_from_one_sent_malformed():
    """Courier serves a message of more than 299 parts up to the delimiter opening part 300. A
    sender's malformed message may end the same way, with a few parts (corpus: 6 of 1,202)."""
    assert served_cut_short(_parts(300, closed=False))
    assert not served_cut_short(_parts(301))  # whole
    assert not served_cut_short(_parts(3, closed=False))  # malformed, as sent
    assert not served_cut_short(_parts(300, closed=False).replace(b'boundary="b"', b'boundary="c"'))
