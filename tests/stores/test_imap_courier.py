"""The Store contract on Courier through ImapStore (tests/servers/courier.py)."""
import pytest

from migrator.stores.base import AppendItem
from tests.stores.conftest import imap_ends
from tests.stores.contract import StoreContract
from tests.stores.corpus import HARD, PLAIN

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("conformance-courier")]


class TestImapCourier(StoreContract):
    holds = frozenset(HARD) - {"bare-lf"}  # stored with CRLF line ends (the size check sees it)
    dates = "instant"  # the instant, not the zone (Maildir mtime; TZ=UTC)
    appends_to_a_folder_selected_read_only = False  # "NO Current box is selected READ-ONLY."
    status_lags_own_appends = True

    @pytest.fixture
    def ends(self, servers):
        # (an INTERNALDATE that is not one: Dovecot would take the literal after it for commands)
        return imap_ends(servers("courier"), AppendItem(PLAIN[0].body, (), "not a date"))
