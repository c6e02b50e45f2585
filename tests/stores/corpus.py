"""Messages the store contract and the engine's memory tests send: each with what makes it hard to
keep (8-bit octets, NUL, a long line, bare LF, keywords, INTERNALDATEs in several zones)."""
from __future__ import annotations

from dataclasses import dataclass

from migrator.stores.base import AppendItem
from tests.helpers import simple_message


@dataclass(frozen=True)
class Sample:
    name: str
    body: bytes
    flags: tuple[str, ...] = ()
    date: str = "14-Mar-2019 15:09:26 +0200"

    def item(self) -> AppendItem:
        return AppendItem(self.body, self.flags, self.date)


def _with_header(i: int, extra: bytes, body: bytes) -> bytes:
    head, _, rest = simple_message(i).partition(b"\r\n\r\n")
    return head + b"\r\n" + extra + b"\r\n\r\n" + body + rest


PLAIN = [Sample(f"plain{i}", simple_message(i), flags, date) for i, (flags, date) in enumerate([
    ((), "14-Mar-2019 15:09:26 +0200"),
    (("\\Seen",), "01-Jan-2020 00:00:00 +0000"),
    (("\\Answered", "\\Flagged", "\\Seen"), "29-Feb-2020 23:59:59 +0530"),
    (("\\Draft",), "04-Jul-2021 08:07:06 -0800"),
])]
KEYWORDS = [Sample("keywords", simple_message(20), ("$Forwarded", "NonJunk", "\\Seen"), "15-Mar-2019 10:00:00 -0300")]
EIGHT_BIT = Sample("8bit", _with_header(30, "Subject: caf\u00e9 \u2013 na\u00efve".encode(), "corps 8 bits: \u00e9t\u00e9\r\n".encode()),
                   ("\\Seen",), "16-Mar-2019 11:00:00 +0100")
LONG_LINE = Sample("long-line", _with_header(31, b"X-Long: yes", b"L" * 5000 + b"\r\n"), (), "17-Mar-2019 12:00:00 +0000")
NUL = Sample("nul", _with_header(32, b"X-Nul: yes", b"a NUL \x00 here\r\n"), (), "18-Mar-2019 13:00:00 +0000")
BARE_LF = Sample("bare-lf", simple_message(33).replace(b"\r\n", b"\n"), (), "19-Mar-2019 14:00:00 +0000")
TWINS = [Sample("twin-a", simple_message(40, body="twin"), (), "20-Mar-2019 15:00:00 +0000"),
         Sample("twin-b", simple_message(40, body="twin"), ("\\Seen",), "21-Mar-2019 16:00:00 -0500")]

# What any store holds exactly as sent; the rest (8-bit, NUL, long lines, bare LF) only where the
# store's own test says it does (the contract's `holds`).
SIMPLE = PLAIN + TWINS
HARD = {"8bit": EIGHT_BIT, "long-line": LONG_LINE, "nul": NUL, "bare-lf": BARE_LF}
