"""The Store contract on Cyrus through ImapStore (tests/servers/cyrus.py)."""
import pytest

from tests.stores.conftest import imap_ends
from tests.stores.contract import StoreContract
from tests.stores.corpus import HARD

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("conformance-cyrus")]


class TestImapCyrus(StoreContract):
    holds = frozenset({"long-line", "nul"})
    refuses = frozenset({"bare-lf"})  # "Message contains bare newlines"
    # (8bit: munge8bit replaces 8-bit header octets with 'X', at the same size)
    dates = "instant"  # served in the server's zone (UTC)

    @pytest.fixture
    def ends(self, servers):
        return imap_ends(servers("cyrus"), HARD["bare-lf"].item())
