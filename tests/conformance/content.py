"""What every conformance source holds: the real-world corpus (../shared/corpus, messages no one
here wrote) with flags, keywords and INTERNALDATEs in several zones, byte-identical twins with
different dates and flags, and a nested folder."""
from __future__ import annotations

from tests import rig
from tests.helpers import dt, simple_message

FLAGS = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Forwarded"), ("\\Seen", "NonJunk")]
TWIN = simple_message(9000, body="the same bytes three times " * 40)


# The corpus's 22 messages over 100 KB (16 of its 20 MB) go to a folder of their own: pairs with
# GNU imap4d leave it out (--exclude), since imap4d APPENDs about 0.3 MB/s.
LARGE = 100_000
LARGE_FOLDER = ("Large",)


def corpus_items(large: bool) -> list[tuple]:
    return [(raw, FLAGS[i % len(FLAGS)], dt(i % 500, tz_hours=(i % 5) - 2))
            for i, (_path, raw) in enumerate(rig.corpus_messages()) if (len(raw) > LARGE) == large]


def folders(large: bool = True) -> dict[tuple, list[tuple]]:
    return {
        ("INBOX",): corpus_items(large=False),
        **({LARGE_FOLDER: corpus_items(large=True)} if large else {}),
        ("Twins",): [(TWIN, (), dt(0)), (TWIN, ("\\Seen",), dt(1, tz_hours=-5)), (TWIN, ("\\Flagged",), dt(2))],
        ("Work", "Projects"): [(simple_message(700 + i, body="w" * 3000), FLAGS[i % len(FLAGS)], dt(i))
                               for i in range(12)],
    }


def seed_source(account, large: bool = True, keywords: bool = True) -> dict:
    """APPEND everything one message at a time (not every server has MULTIAPPEND). What a server
    refuses is left out; a message refused with keywords is stored without them (imap4d refuses
    keywords): the source is what the server holds afterwards. Returns counts of both.
    keywords=False: the keywords are left out at once, for a server known to refuse every APPEND
    that has one (GNU imap4d; each refusal costs as much as an APPEND: a fifth of its seeding)."""
    notes = {"refused": 0, "keywords_dropped": 0}
    for folder, items in folders(large).items():
        if not keywords:
            refused = rig.append_each(account, folder, [(raw, _system(flags), date) for raw, flags, date in items])
            notes["keywords_dropped"] += sum(1 for (_r, flags, _d), why in zip(items, refused, strict=True)
                                             if why is None and _system(flags) != tuple(flags))
            notes["refused"] += sum(1 for why in refused if why is not None)
            continue
        refused = rig.append_each(account, folder, items)
        again = [(raw, _system(flags), date) for (raw, flags, date), why in zip(items, refused, strict=True)
                 if why is not None and _system(flags) != tuple(flags)]
        recovered = sum(1 for why in rig.append_each(account, folder, again) if why is None) if again else 0
        notes["keywords_dropped"] += recovered
        notes["refused"] += sum(1 for why in refused if why is not None) - recovered
    return notes


def _system(flags) -> tuple:
    """The flags less the keywords."""
    return tuple(f for f in flags if f.startswith("\\"))


def pop3_inbox() -> list[tuple]:
    """The POP3 source's content: every folder's messages in its one folder, INBOX, without the
    large ones (in one folder, they could not be left out where GNU imap4d is the destination)."""
    return [item for items in folders(large=False).values() for item in items]
