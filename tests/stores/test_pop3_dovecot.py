"""The read-only Store contract on Dovecot's POP3 server through Pop3Store, seeded over IMAP."""
import pytest

from tests.stores.conftest import pop3_ends
from tests.stores.contract import ReadOnlyContract
from tests.stores.corpus import HARD

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("conformance-dovecot")]


class TestPop3Dovecot(ReadOnlyContract):
    holds = frozenset(HARD) - {"bare-lf"}  # stored with CRLF line ends (Dovecot's IMAP APPEND)

    @pytest.fixture
    def ends(self, servers):
        return pop3_ends(servers("dovecot"))
