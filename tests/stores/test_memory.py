"""The Store contract on the in-memory store, with and without UIDPLUS/MULTIAPPEND, and on a
server that refuses keywords as GNU imap4d does."""
from typing import ClassVar

import pytest

from migrator.stores.base import AppendItem
from migrator.stores.memory import MemoryServer
from tests.stores.contract import Ends, StoreContract

REFUSED = AppendItem(b"Subject: refused\r\n\r\nrefused by the test\r\n", (), "01-Jan-2020 00:00:00 +0000")


class TestMemory(StoreContract):
    options: ClassVar[dict] = {}

    @pytest.fixture
    def ends(self):
        server = MemoryServer(**self.options)
        server.refuse_appends(match=lambda body: body == REFUSED.body, text="APPEND [OVERQUOTA] refused")
        return Ends(server.connect, delete_folder=server.delete_folder, refused=REFUSED)


class TestMemoryPlainImap(TestMemory):
    options: ClassVar[dict] = {"uidplus": False, "multiappend": False, "condstore": False, "separator": "."}


class TestMemoryWithoutKeywords(TestMemory):
    options: ClassVar[dict] = {"keywords": False}
