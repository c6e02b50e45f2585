"""What a destination does to flags on its own, and what the run does about it (pure).

Some servers do not keep what an APPEND says, or add flags of their own: Microsoft 365 drops
`\\Flagged` given in an APPEND and adds `$MDNSent` (a preset's [destination] table says so:
`flags_set_after_append`, `flags_added`; migrator/presets/). The engine then:

- sets the lost flags by STORE right after the APPEND (copying.py), and checks them in the
  listing of the folder's end (ending.py);
- does not count a flag the server adds as a difference when the source message lacks it: the
  flag sync of a rerun (march.py, sync.py, matching.py) does not try to remove it, verify does not
  report it. A flag the source message has is compared as any other.

Flags are compared case-insensitively (IMAP flags and keywords are).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from migrator.presets import DestinationRules


@dataclass(frozen=True)
class FlagRules:
    set_after_append: frozenset[str] = frozenset()  # casefolded
    added_by_server: frozenset[str] = frozenset()  # casefolded

    @classmethod
    def of(cls, set_after_append: Iterable[str] = (), added_by_server: Iterable[str] = ()) -> FlagRules:
        return cls(frozenset(f.casefold() for f in set_after_append), frozenset(f.casefold() for f in added_by_server))

    @classmethod
    def of_destination(cls, rules: DestinationRules | None) -> FlagRules:
        """A --dst-preset's rules (None: the destination keeps flags as given, adds none)."""
        return cls.of(rules.flags_set_after_append, rules.flags_added) if rules is not None else NO_FLAG_RULES

    def to_store(self, flags: Iterable[str]) -> tuple[str, ...]:
        """Of the flags a message is appended with, those to set again by STORE after the APPEND."""
        return tuple(f for f in flags if f.casefold() in self.set_after_append)

    def held(self, want: Iterable[str], have: Iterable[str]) -> set[str]:
        """What the destination holds of a message's flags, without those the server added by
        itself that the source message lacks (not a difference)."""
        wanted = {f.casefold() for f in want}
        return {f for f in have if f.casefold() in wanted or f.casefold() not in self.added_by_server}

    def changes(self, want: Iterable[str], have: Iterable[str]) -> tuple[list[str], list[str]]:
        """(flags to add, flags to remove) to bring a copy in step with its source message."""
        want, have = set(want), set(have)
        return sorted(want - have), sorted(self.held(want, have) - want)

    def differ(self, want: Iterable[str], have: Iterable[str]) -> bool:
        add, remove = self.changes(want, have)
        return bool(add or remove)

    def missing(self, want: Iterable[str], have: Iterable[str]) -> tuple[str, ...]:
        """The flags to be set after APPEND that the destination's listing does not show."""
        held = {f.casefold() for f in have}
        return tuple(f for f in self.to_store(want) if f.casefold() not in held)


NO_FLAG_RULES = FlagRules()
