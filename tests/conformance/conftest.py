"""The conformance suite's ends: every server kind the rig can start (tests/conftest.py: servers),
each seeded once as a source.

A source is seeded once per worker and kind and only read afterwards; every test writes into
destination users of its own.
"""
from __future__ import annotations

import pytest

from tests import rig
from tests.conformance.content import seed_source


@pytest.fixture(scope="session")
def sources(servers):
    """sources(kind) -> (account, what the server holds as rig.messages_by_uid, seeding notes)."""
    seeded: dict = {}

    def get(kind: str):
        if kind not in seeded:
            account = servers(kind).new_user("csrc")
            notes = seed_source(account, large=kind != "imap4d")
            seeded[kind] = (account, rig.messages_by_uid(account), notes)
        return seeded[kind]

    return get
