"""The conformance suite's ends: every server kind the rig can start, each seeded once as a source.

Servers are started lazily, one instance of each kind per pytest-xdist worker (a missing server
is an error, never a skip). A source is seeded once per worker and kind and only read afterwards;
every test writes into destination users of its own.
"""
from __future__ import annotations

import importlib

import pytest

from tests import rig
from tests.conformance.content import seed_source

# kind -> (module, class) of the servers the rig starts besides Dovecot (tests/servers/)
OTHER_SERVERS = {
    "cyrus": ("tests.servers.cyrus", "Cyrus"),
    "courier": ("tests.servers.courier", "Courier"),
    "imap4d": ("tests.servers.imap4d", "Imap4d"),
}


@pytest.fixture(scope="session")
def servers(rig_root, dovecot_slash):
    """servers(kind) -> a started server of that kind (Dovecot: the rig's '/' instance)."""
    started: dict = {}

    def get(kind: str):
        if kind == "dovecot":
            return dovecot_slash
        if kind not in started:
            module, name = OTHER_SERVERS[kind]
            server = getattr(importlib.import_module(module), name)(rig_root, f"conf-{kind}")
            try:
                server.start()  # raises with the server's log tail: the test errors
            except BaseException:
                server.cleanup()
                raise
            started[kind] = server
        return started[kind]

    yield get
    for server in started.values():
        server.cleanup()


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
