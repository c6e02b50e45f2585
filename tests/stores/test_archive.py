"""The Store contract on the local archive (migrator/stores/archive.py), plain and encrypted."""
import json
import sqlite3

import pytest

from migrator.stores.archive import ArchiveStore
from tests.stores.contract import Ends, StoreContract


def _deleter(path: str):
    def delete_folder(name):  # the archive has no call for it: its index row goes
        with sqlite3.connect(f"{path}/index.sqlite") as db:
            db.execute("DELETE FROM folders WHERE name=?", (json.dumps(list(name), ensure_ascii=False),))

    return delete_folder


class TestArchive(StoreContract):
    @pytest.fixture
    def ends(self, tmp_path):
        path = str(tmp_path / "archive")
        return Ends(lambda: ArchiveStore(path), delete_folder=_deleter(path))  # it refuses no message


class TestEncryptedArchive(StoreContract):
    """The same contract on an encrypted archive (--encrypt-to), read with its identity."""

    @pytest.fixture
    def ends(self, tmp_path):
        pyrage = pytest.importorskip("pyrage")
        key = pyrage.x25519.Identity.generate()
        identity = tmp_path / "key.txt"
        identity.write_text(f"{key}\n")
        identity.chmod(0o600)
        path = str(tmp_path / "archive")
        return Ends(lambda: ArchiveStore(path, encrypt_to=(str(key.to_public()),), identity=str(identity)),
                    delete_folder=_deleter(path))
