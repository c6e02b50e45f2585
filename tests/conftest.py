"""Pytest fixtures: real Dovecot instances per xdist worker (see tests/rig.py)."""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile

import pytest

from tests.rig import Account, Dovecot

# The CLI runs in subprocesses (`python -m migrator`): they import the migrator of this checkout,
# not whichever one the environment's editable install points at (several worktrees share it).
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_CHECKOUT, os.environ.get("PYTHONPATH")) if p)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: talks to a real Dovecot started by the test rig")


@pytest.fixture(scope="session")
def rig_root():
    """Per-worker scratch dir under /tmp (world-traversable for the migtest mail user)."""
    root = tempfile.mkdtemp(prefix="mgr-", dir="/tmp")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def started(server):
    """server, started; one that fails to start is cleaned up and raises (the test errors, never
    skips) with its log tail. For any rig server: Dovecot, tests/servers/*."""
    try:
        server.start()
    except BaseException:
        server.cleanup()
        raise
    return server


def _instance(root, name, **kw):
    return started(Dovecot(root, name, **kw))


@pytest.fixture(scope="session")
def dovecot_slash(rig_root):
    """separator '/', no prefix, special-use folders Sent/Drafts/Trash/Junk/Archive declared."""
    d = _instance(rig_root, "slash", separator="/", prefix="", special_use=True)
    yield d
    d.cleanup()


@pytest.fixture(scope="session")
def dovecot_dot(rig_root):
    """separator '.', prefix 'INBOX.', no special-use."""
    d = _instance(rig_root, "dot", separator=".", prefix="INBOX.", special_use=False)
    yield d
    d.cleanup()


@pytest.fixture
def src_account(dovecot_slash) -> Account:
    return dovecot_slash.new_user("src")


@pytest.fixture
def dst_account(dovecot_slash) -> Account:
    return dovecot_slash.new_user("dst")


@pytest.fixture
def dot_account(dovecot_dot) -> Account:
    return dovecot_dot.new_user("dot")


@pytest.fixture
def new_account(dovecot_slash, dovecot_dot):
    """Factory: new_account(instance='slash'|'dot', prefix='u', quota=None) -> Account."""
    instances = {"slash": dovecot_slash, "dot": dovecot_dot}

    def make(instance: str = "slash", prefix: str = "u", quota=None, max_mail_size=None) -> Account:
        return instances[instance].new_user(prefix, quota=quota, max_mail_size=max_mail_size)

    return make


# kind -> (module, class) of the servers the rig starts besides Dovecot (tests/servers/)
OTHER_SERVERS = {
    "cyrus": ("tests.servers.cyrus", "Cyrus"),
    "courier": ("tests.servers.courier", "Courier"),
    "imap4d": ("tests.servers.imap4d", "Imap4d"),
}


@pytest.fixture(scope="session")
def servers(rig_root, dovecot_slash):
    """servers(kind) -> a started server of that kind (Dovecot: the rig's '/' instance). Started
    lazily, one instance of each kind per pytest-xdist worker, shared by the conformance suite and
    the store contract (a missing server is an error, never a skip)."""
    running: dict = {}

    def get(kind: str):
        if kind == "dovecot":
            return dovecot_slash
        if kind not in running:
            module, name = OTHER_SERVERS[kind]
            running[kind] = started(getattr(importlib.import_module(module), name)(rig_root, f"conf-{kind}"))
        return running[kind]

    yield get
    for server in running.values():
        server.cleanup()
