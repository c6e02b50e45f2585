"""Message filters: which source messages a run copies (--since, --before, --min-size, --max-size).

Decided in the plan (its [filters] table) and applied by the march (engine/march.py) to messages
it would otherwise copy; a message copied by an earlier run stays "already copied" whatever the
filters say. A message left out is counted in the report as skipped, with the filter's reason.

Dates follow IMAP SEARCH (RFC 3501 6.4.4): SINCE is "INTERNALDATE's day >= the day", BEFORE is
"INTERNALDATE's day < the day", the time of day and the zone disregarded. The day is the one
written in the INTERNALDATE as the source server gives it, in the zone it gives it in ("31-Dec-2023
23:30:00 -0500" is on 31 Dec 2023, though it is 1 Jan in UTC): neither converted to UTC nor to the
local zone of the machine running migrator. That is what `UID SEARCH SINCE` answers on Dovecot and
Cyrus, whose INTERNALDATEs are written in the server's zone.

Sizes are RFC822.SIZE, the size the source lists, in bytes; K, M and G are 1024-based (10M =
10,485,760 bytes), as Dovecot's and Cyrus's own size settings read them. --min-size keeps messages
of at least that size, --max-size of at most that size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from migrator.errors import UsageError
from migrator.imapdate import MONTHS
from migrator.stores.base import MessageMeta

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_IMAP_DAY = re.compile(r"^\s*(\d{1,2})-([A-Za-z]{3})-(\d{4})")


def parse_size(text: str, option: str = "size") -> int:
    """'10M' -> 10485760; '1.5K' -> 1536; '300' -> 300 (bytes). K/M/G are 1024-based."""
    m = _SIZE.match(text or "")
    if not m:
        raise UsageError(f"{option} {text!r}: expected a size such as 500K, 10M or 2G (1024-based), "
                         "or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_day(text: str, option: str = "date") -> date:
    """'2024-01-31' (ISO) or '31-Jan-2024' (IMAP) -> that day."""
    t = (text or "").strip()
    try:
        return date.fromisoformat(t)
    except ValueError:
        pass
    m = _IMAP_DAY.match(t)
    if m and m.group(2).capitalize() in MONTHS and m.end() == len(t):
        try:
            return date(int(m.group(3)), MONTHS.index(m.group(2).capitalize()) + 1, int(m.group(1)))
        except ValueError:
            pass
    raise UsageError(f"{option} {text!r}: expected a day such as 2024-01-31 (or 31-Jan-2024)")


def internal_day(internaldate: str) -> date | None:
    """The day written in an INTERNALDATE ('05-Mar-2024 23:10:00 -0800' -> 2024-03-05), or None."""
    m = _IMAP_DAY.match(internaldate or "")
    if not m or m.group(2).capitalize() not in MONTHS:
        return None
    try:
        return date(int(m.group(3)), MONTHS.index(m.group(2).capitalize()) + 1, int(m.group(1)))
    except ValueError:
        return None


def size_text(n: int) -> str:
    """A size as the options take it: the largest 1024-based unit that divides it."""
    for unit in ("G", "M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


@dataclass(frozen=True)
class Filters:
    since: date | None = None
    before: date | None = None
    min_size: int | None = None
    max_size: int | None = None

    @classmethod
    def parse(cls, since: str | None = None, before: str | None = None, min_size: str | None = None,
              max_size: str | None = None) -> Filters:
        """From the command line's text; refuses an empty window."""
        f = cls(parse_day(since, "--since") if since else None, parse_day(before, "--before") if before else None,
                parse_size(min_size, "--min-size") if min_size else None,
                parse_size(max_size, "--max-size") if max_size else None)
        if f.since and f.before and f.since >= f.before:
            raise UsageError(f"--since {f.since} and --before {f.before} leave no day: nothing would be copied")
        if f.min_size is not None and f.max_size is not None and f.min_size > f.max_size:
            raise UsageError(f"--min-size {min_size} is larger than --max-size {max_size}: nothing would be copied")
        return f

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.since, self.before, self.min_size, self.max_size))

    @property
    def by_date(self) -> bool:
        return self.since is not None or self.before is not None

    def reason(self, meta: MessageMeta) -> str | None:
        """Why the message is left out (the report's skip reason), or None if it is copied."""
        if self.min_size is not None and meta.size < self.min_size:
            return f"smaller than --min-size {size_text(self.min_size)}"
        if self.max_size is not None and meta.size > self.max_size:
            return f"larger than --max-size {size_text(self.max_size)}"
        if self.by_date:
            day = internal_day(meta.internaldate)
            if day is None:
                # A listing without a readable date: a date filter cannot place it. The runner refuses
                # date filters on sources whose listings give no dates (POP3), so this is a bad date.
                return "INTERNALDATE unreadable: outside any --since/--before window"
            if self.since is not None and day < self.since:
                return f"received before --since {self.since.isoformat()}"
            if self.before is not None and day >= self.before:
                return f"received on or after --before {self.before.isoformat()}"
        return None

    def as_dict(self) -> dict[str, str]:
        """The plan file's [filters] table (days in ISO form, sizes as the options write them)."""
        out = {}
        if self.since:
            out["since"] = self.since.isoformat()
        if self.before:
            out["before"] = self.before.isoformat()
        if self.min_size is not None:
            out["min_size"] = size_text(self.min_size)
        if self.max_size is not None:
            out["max_size"] = size_text(self.max_size)
        return out

    @classmethod
    def from_dict(cls, table: dict[str, str]) -> Filters:
        return cls.parse(table.get("since"), table.get("before"), table.get("min_size"), table.get("max_size"))

    def describe(self) -> str:
        parts = [f"--{k.replace('_', '-')} {v}" for k, v in self.as_dict().items()]
        return " ".join(parts) if parts else "none"


NO_FILTERS = Filters()
