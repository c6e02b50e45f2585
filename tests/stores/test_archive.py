"""The Store contract on the local archive (migrator/stores/archive.py)."""
import json
import sqlite3

import pytest

from migrator.stores.archive import ArchiveStore
from tests.stores.contract import Ends, StoreContract


class TestArchive(StoreContract):
    @pytest.fixture
    def ends(self, tmp_path):
        path = str(tmp_path / "archive")

        def delete_folder(name):  # the archive has no call for it: its index row goes
            with sqlite3.connect(f"{path}/index.sqlite") as db:
                db.execute("DELETE FROM folders WHERE name=?", (json.dumps(list(name), ensure_ascii=False),))

        return Ends(lambda: ArchiveStore(path), delete_folder=delete_folder)  # it refuses no message
