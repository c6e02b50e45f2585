"""Encryption at rest of an archive's frames: age (https://age-encryption.org), through pyrage.

Compress, then encrypt: each zstd frame is age-encrypted as one unit (archive_frames.py), so the
index's offset and length point at one age file each and random access stays. Only the
recipients' public keys (age1...) are kept, in archive.json; whoever reads bodies (restore,
verify, `archive export`, a full `archive check`) gives an identity file (--identity: as
`age-keygen` writes it). A backup into an encrypted archive never needs one: what it must know of
the bytes it holds is their SHA-256, in the index, and each frame's ciphertext is checked against
its own SHA-256 (column frame_sha256) instead of being decrypted (docs/security.md says what this
hides and what it does not).

The identity is a secret: its contents are kept in memory only, never written anywhere; only
its path is ever shown.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from migrator.errors import UsageError

AGE_MAGIC = b"age-encryption.org/v1\n"  # every age file starts so: `archive check` looks for it
_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")
INSTALL_HINT = "pip install 'migrator[encrypt]'"
_warned: set[str] = set()  # identity files warned about (readable by others)


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError:
        raise UsageError("encrypted archives need pyrage, which is not installed", hint=INSTALL_HINT) from None
    return pyrage


def parse_recipients(given: Sequence[str], files: Sequence[str] = ()) -> tuple[str, ...]:
    """--encrypt-to values and the recipients of --encrypt-to-file files (one a line, # comments),
    checked, deduplicated and sorted (so the same set given in another order is the same)."""
    _pyrage()  # not installed: say so before anything else
    found = list(given)
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                found += [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"--encrypt-to-file {path}: {e.strerror or e}") from None
    for value in found:
        if not _RECIPIENT.fullmatch(value):
            raise UsageError(f"--encrypt-to {value[:80]!r} is not an age recipient (age1..., as `age-keygen -y` "
                             "prints it)")
    return tuple(sorted(set(found)))


@dataclass(frozen=True)
class Sealer:
    """Encrypts frames to the archive's recipients (a backup: no identity needed)."""

    recipients: tuple[str, ...]

    def __post_init__(self) -> None:
        mod = _pyrage()
        object.__setattr__(self, "_keys", [mod.x25519.Recipient.from_str(r) for r in self.recipients])

    def seal(self, frame: bytes) -> bytes:
        return _pyrage().encrypt(frame, self._keys)  # type: ignore[attr-defined]


class Opener:
    """Decrypts frames with the identities of an identity file (restore, verify, export, check)."""

    def __init__(self, path: str, recipients: Sequence[str]):
        mod = _pyrage()
        self.path = path
        self._identities = _read_identities(mod, path)
        publics = {str(i.to_public()) for i in self._identities}
        if not publics & set(recipients):
            raise UsageError(f"--identity {path}: none of its keys is a recipient of this archive (wrong identity "
                             "file?)")
        self._error = mod.DecryptError

    def open(self, frame: bytes) -> tuple[bytes | None, str | None]:
        """(the zstd frame, None), or (None, why it does not decrypt)."""
        try:
            return _pyrage().decrypt(frame, self._identities), None
        except self._error as e:
            return None, f"its age-encrypted frame does not decrypt ({e})"


def _read_identities(mod: Any, path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            lines = [line.strip() for line in fh]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--identity {path}: {getattr(e, 'strerror', None) or e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and path not in _warned:
        # As ssh warns of a private key others can read (once, not per worker); the run goes on.
        _warned.add(path)
        print(f"warning: --identity {path} is readable by group or others (chmod 600 it)", file=sys.stderr)
    keys = [line for line in lines if line and not line.startswith("#")]
    out = []
    for n, key in enumerate(keys, 1):
        try:
            out.append(mod.x25519.Identity.from_str(key))
        except mod.IdentityError:
            # The line itself is a secret: never shown.
            raise UsageError(f"--identity {path}: key {n} is not an age identity (AGE-SECRET-KEY-1...)") from None
    if not out:
        raise UsageError(f"--identity {path}: no age identity in it (AGE-SECRET-KEY-1..., as age-keygen writes)")
    return out


def needs_identity(path: str, what: str) -> UsageError:
    """The one line for reading an encrypted archive's bodies without --identity."""
    return UsageError(f"archive {path} is encrypted: {what} needs --identity FILE (the age identity of one of "
                      "its recipients)")
