"""SHA-256, for the two things migrator derives from it.

- fingerprint(): what identifies a message's bytes wherever they are compared (the state file,
  the march's pool, verify, the archive index).
- short_digest(): a short, stable number for a name that must read the same on every run (a
  POP3 UIDL becomes a UID; an account pair names its default state file).
"""

from __future__ import annotations

import hashlib


def fingerprint(body: bytes) -> str:
    """A message's fingerprint: SHA-256 of its bytes, a NUL counted as 0x80. Dovecot serves a
    stored NUL as 0x80 (an IMAP literal cannot carry it), Cyrus and Courier as NUL in a literal8:
    the same stored message reads both ways (docs/resume.md, the fingerprint)."""
    if b"\x00" in body:
        body = body.replace(b"\x00", b"\x80")
    return hashlib.sha256(body).hexdigest()


def short_digest(data: bytes) -> int:
    """The first 48 bits of the SHA-256 of DATA, as a number (12 hex digits)."""
    return int.from_bytes(hashlib.sha256(data).digest()[:6], "big")
