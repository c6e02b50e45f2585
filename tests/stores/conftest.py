"""How the store contract reaches a real server (tests/conftest.py `servers` starts them, one of
each kind per pytest-xdist worker; a missing server is an error, never a skip): a new user, through
migrator's own store."""
from __future__ import annotations

from migrator.accounts import parse_endpoint
from migrator.stores.base import AppendItem
from migrator.stores.imap import Credentials, ImapStore
from migrator.stores.pop3 import Pop3Store
from tests import rig
from tests.stores.contract import Ends


def _delete(account):
    def delete_folder(name) -> None:
        c = rig.connect(account)
        try:
            c.delete_folder(rig.folder_name(account, name))
        finally:
            c.logout()

    return delete_folder


def imap_ends(server, refused: AppendItem, **user) -> Ends:
    """A new user of `server` (user: new_user's keywords), reached through migrator's ImapStore;
    refused: a message the server answers NO."""
    account = server.new_user("store", **user)
    ep = parse_endpoint(account.url)
    return Ends(lambda: ImapStore(ep, Credentials(password=lambda: account.password)), delete_folder=_delete(account),
                refused=refused)


def pop3_ends(server) -> Ends:
    """A new user of a Dovecot, read through migrator's Pop3Store, seeded over IMAP."""
    account = server.new_user("pop")
    ep = parse_endpoint(account.pop3_url)

    def seed(folder, samples) -> None:
        rig.seed(account, folder, [(s.body, s.flags) for s in samples])

    return Ends(lambda: Pop3Store(ep, Credentials(password=lambda: account.password)), seed=seed)
