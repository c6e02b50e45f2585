"""A keyring backend for tests (a stand-in for the system keyring): entries in one JSON file.

Selected in a migrator subprocess with PYTHON_KEYRING_BACKEND=tests.keyring_standin.FileKeyring;
the file is MIGRATOR_TEST_KEYRING, which tests keep outside the state and plan directories, so a
test can both read what migrator kept "in the keyring" and grep those directories for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class FileKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]  # only ever chosen by name

    @staticmethod
    def _path() -> Path:
        return Path(os.environ["MIGRATOR_TEST_KEYRING"])

    def _load(self) -> dict[str, str]:
        path = self._path()
        return json.loads(path.read_text()) if path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        entries = self._load()
        entries[f"{service}/{username}"] = password
        self._path().write_text(json.dumps(entries))

    def delete_password(self, service: str, username: str) -> None:
        entries = self._load()
        if entries.pop(f"{service}/{username}", None) is None:
            raise PasswordDeleteError(username)
        self._path().write_text(json.dumps(entries))


def entries(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}
