"""The Store contract on Dovecot through ImapStore (the rig's instance: '/' separator)."""
import pytest

from migrator.stores.base import AppendItem
from tests.stores.conftest import imap_ends
from tests.stores.contract import StoreContract
from tests.stores.corpus import HARD, PLAIN

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("conformance-dovecot")]


class TestImapDovecot(StoreContract):
    holds = frozenset(HARD) - {"bare-lf"}  # stored with CRLF line ends (the size check sees it)
    dates = "instant"  # served in the server's zone (the rig's: UTC)

    @pytest.fixture
    def ends(self, servers):
        # A message over the account's size limit: "NO [LIMIT] Mail size is larger than the maximum..."
        return imap_ends(servers("dovecot"), AppendItem(b"Subject: big\r\n\r\n" + b"x" * 40_000, (), PLAIN[0].date),
                         max_mail_size="20k")
