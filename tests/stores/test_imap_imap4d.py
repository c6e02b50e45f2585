"""The Store contract on Imap4d through ImapStore (tests/servers/imap4d.py)."""
import pytest

from tests.stores.conftest import imap_ends
from tests.stores.contract import StoreContract
from tests.stores.corpus import HARD, KEYWORDS

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("conformance-imap4d")]


class TestImapImap4d(StoreContract):
    served = "loose"  # mbox: X-UID, X-IMAPbase, Status: added to what is served, fields re-spaced
    refuses_keywords = True  # "BAD APPEND Unrecognized flag" (ImapStore cannot tell beforehand)
    dates = "wall-clock"  # the digits kept, the zone lost: "15:09:26 +0530" reads "15:09:26 +0000"
    holds = frozenset(HARD) - {"nul"}  # cut at the first NUL (line ends: the loose form makes them CRLF)
    uidvalidity_from_the_clock = True

    @pytest.fixture
    def ends(self, servers):
        return imap_ends(servers("imap4d"), KEYWORDS[0].item())
