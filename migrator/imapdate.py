"""INTERNALDATE, the IMAP date-time (RFC 3501): "dd-Mon-yyyy hh:mm:ss +zzzz", its zone kept.

The one codec for every side: the IMAP store writes what imapclient read as a datetime, the POP3
store makes one out of a Received: or Date: header (RFC 5322), and verify and the march compare
two of them as instants, since a server may keep the instant of a date it was given but not its
zone ("01-Jan-2024 01:00:00 +0100" and "01-Jan-2024 00:00:00 +0000" are the same date).

Month names are written from MONTHS, never from the locale. Reading uses strptime's %b, which
reads them in the locale Python starts in (C: English); migrator never calls setlocale.
"""

from __future__ import annotations

import email.utils
from datetime import datetime

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# How INTERNALDATE is read (strptime): a day of one or two digits, the zone as +hhmm.
INTERNALDATE_FORMAT = "%d-%b-%Y %H:%M:%S %z"


def format_date(dt: datetime) -> str:
    """A datetime as INTERNALDATE text, in its own zone; a naive one is taken as local time."""
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return dt.strftime(f"%d-{MONTHS[dt.month - 1]}-%Y %H:%M:%S %z")


def parse_date(text: str) -> datetime | None:
    """INTERNALDATE text as an aware datetime (its zone kept), or None if it is not one."""
    try:
        return datetime.strptime(text.strip(), INTERNALDATE_FORMAT)
    except ValueError:
        return None


def date_instant(text: str) -> float | None:
    """INTERNALDATE as seconds since the epoch, or None if the text is not an INTERNALDATE."""
    dt = parse_date(text)
    return None if dt is None else dt.timestamp()


def date_key(text: str) -> float | str:
    """What two dates are compared by: the instant, or the text itself where it is not an INTERNALDATE."""
    instant = date_instant(text)
    return text if instant is None else instant


def same_date(a: str, b: str) -> bool:
    """Whether two INTERNALDATEs are the same instant; True where either is not a date (not known)."""
    x, y = date_instant(a), date_instant(b)
    return x is None or y is None or x == y


# What a 32-bit signed time_t holds. A server that keeps dates as another type stores a date outside
# it as another date, and may show the session that stored it the date it was given (Dovecot's
# Maildir keeps 13-Feb-1969 as 23-Mar-2105; the storing session still lists 1969).
_TIME_T = (0, 2**31)


def date_at_risk(text: str) -> bool:
    """An INTERNALDATE outside a 32-bit time_t's range (before 1970, from 2038 on)."""
    instant = date_instant(text)
    return instant is not None and not _TIME_T[0] <= instant < _TIME_T[1]


def from_rfc5322(value: str) -> str:
    """An RFC 5322 date (a Date: header, the end of a Received: one) as INTERNALDATE text, or ''
    if it cannot be read or names no zone."""
    try:
        dt = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return ""
    if dt is None or dt.tzinfo is None:
        return ""
    return format_date(dt)
