"""short_digest names things that must read the same on every run and every version: a POP3
message's UID (from its UIDL) and the default state file of an account pair."""

import hashlib

from migrator.digest import short_digest


def test_short_digest_is_the_first_48_bits_of_sha256():
    assert short_digest(b"abc") == 0xBA7816BF8F01
    assert f"{short_digest(b'a -> b'):012x}" == hashlib.sha256(b"a -> b").hexdigest()[:12]
