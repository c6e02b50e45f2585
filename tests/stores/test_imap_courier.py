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

    @pytest.mark.xfail(strict=True, reason="bug: Courier answers CREATE of an existing folder 'NO Cannot create "
                                           "this folder.', which ImapStore.create_folders reports as an error")
    def test_creating_a_folder_that_exists_is_no_error(self, store):
        super().test_creating_a_folder_that_exists_is_no_error(store)

    @pytest.fixture
    def ends(self, servers):
        # (an INTERNALDATE that is not one: Dovecot would take the literal after it for commands)
        return imap_ends(servers("courier"), AppendItem(PLAIN[0].body, (), "not a date"))
