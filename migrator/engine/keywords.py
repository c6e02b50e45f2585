"""Destinations that cannot store keywords (GNU imap4d answers `BAD Unrecognized flag` to an APPEND
or STORE naming `$Forwarded` or `NonJunk`; its PERMANENTFLAGS has no `\\*`).

Such a message is still copied, with its system flags, and reported with the keywords it lost:
"identical or reported", never refused whole for a keyword. The engine learns the refusal from
the server itself, the first time a copy or a flag change is refused with keywords and accepted
without them; from then on it leaves keywords out at once, so that a server that counts errors
(Microsoft 365 closes a session after 10) sees one, not one per message.
"""

from __future__ import annotations

import threading
from typing import Iterable

from migrator.errors import FolderError
from migrator.stores.base import Store


def keywords_of(flags: Iterable[str]) -> tuple[str, ...]:
    """The keywords among flags: every flag not starting with a backslash (RFC 3501 flag-keyword)."""
    return tuple(f for f in flags if not f.startswith("\\"))


def system_flags(flags: Iterable[str]) -> tuple[str, ...]:
    return tuple(f for f in flags if f.startswith("\\"))


def lost_keywords_reason(lost: Iterable[str], refusal: str) -> str:
    return (f"copied without its keyword(s) {' '.join(sorted(lost))}: the destination refuses keywords "
            f"({refusal})")


class KeywordRefusal:
    """What this run has learnt about one destination: whether it refuses keywords, and why.
    Shared by all workers of the run (thread-safe); None until a refusal is seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None

    @property
    def reason(self) -> str | None:
        return self._reason

    def learn(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason

    def keep(self, flags: Iterable[str]) -> tuple[str, ...]:
        """The flags the destination can hold: all of them until a refusal was seen."""
        flags = tuple(flags)
        return flags if self._reason is None else system_flags(flags)

    def lost(self, flags: Iterable[str]) -> tuple[str, ...]:
        """The keywords left out of these flags (none until a refusal was seen)."""
        return () if self._reason is None else keywords_of(flags)


def set_flags_kept(dst: Store, uid: int, want: Iterable[str], have: Iterable[str],
                   refusals: KeywordRefusal) -> tuple[str, ...]:
    """Bring a destination message's flags from `have` to `want` as far as the destination holds
    them (one STORE refused with keywords teaches the run that it refuses them, and is sent again
    without). Returns the keywords it could not take, for the report."""
    want, have = tuple(want), set(have)
    kept = set(refusals.keep(want))
    if kept != have:
        try:
            dst.set_flags(uid, sorted(kept - have), sorted(have - kept))
        except FolderError as e:
            if refusals.reason is not None or not keywords_of(kept - have):
                raise
            refusals.learn(str(e))
            return set_flags_kept(dst, uid, want, have, refusals)
    return tuple(sorted(set(refusals.lost(want)) - have))
