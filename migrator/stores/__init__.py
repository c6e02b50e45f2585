"""Store implementations, and Connector: how a run opens connections to one side."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

from migrator.accounts import Endpoint
from migrator.errors import UsageError
from migrator.secrets import SecretSource, get_password, keyring_name, run_token_command
from migrator.stores.base import Capabilities, Store


class HostSlots:
    """--max-connections-per-host for one run: a semaphore per host name, shared by both sides'
    Connectors and so by all workers of the run. Each run has its own: in a batch, it hands out
    what the mailbox reserved for the whole batch (hostlimits.py), at most
    --max-connections-per-account (providers limit connections per account, Gmail: 15)."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._by_host: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def of(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._by_host.setdefault(host.lower(), threading.BoundedSemaphore(self.per_host))


@dataclass
class Connector:
    """Everything needed to open one more connection to one side of a run.

    The password is asked for once (prompt, file or env) and kept in memory
    only; workers call open() for their own connections.
    """

    endpoint: Endpoint
    secret: SecretSource
    ca_file: str | None = None
    insecure: bool = False
    allow_plaintext: bool = False
    compress: bool = False  # COMPRESS=DEFLATE on IMAP, when the server offers it
    labels_as_keywords: bool = False  # a Gmail source: its labels also as keywords (stores/gmail.py)
    auth_user: str | None = None
    timeout: float = 120.0
    slots: HostSlots | None = None  # --max-connections-per-host of the run; None: unlimited
    # For stores that keep snapshots (the archive): only read (a verify, a restore's source:
    # never refused while a backup writes); which snapshot to read (--as-of); whether a writing
    # connection records the run as a snapshot (not a plan or a dry run). Other stores ignore them.
    readonly: bool = False
    as_of: str | None = None
    snapshot: bool = False
    # An archive's encryption (archive_crypt.py): the age recipients a new destination archive is
    # encrypted to, and the identity file (its path; read by the store) that reads an encrypted one.
    encrypt_to: tuple[str, ...] = ()
    identity: str | None = None
    # An archive read only for its messages' SHA-256s (verify's destination): opened without the
    # identity an encrypted one needs for their bytes.
    digests_only: bool = False
    _creds: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _credentials(self):
        from migrator.stores.connection import Credentials

        with self._lock:
            if self._creds is None:
                if self.secret.oauth2 is not None:
                    from migrator.oauth2 import token_session

                    self._creds = Credentials(session=token_session(self.secret.oauth2, self.endpoint.user, _say))
                elif self.secret.oauth2_token_cmd:
                    cmd = self.secret.oauth2_token_cmd
                    self._creds = Credentials(token=lambda: run_token_command(cmd))
                else:
                    ep = self.endpoint
                    password = get_password(self.secret, ep.url(), keyring_user=keyring_name(ep.user, ep.host))
                    self._creds = Credentials(password=lambda: password)
            return self._creds

    def ask_secret(self) -> None:
        """Get the password now (prompt, file, env, keyring): before connections open in parallel,
        so two prompts never interleave on the terminal."""
        if self.endpoint.is_network:
            self._credentials()

    def open(self) -> Store:
        """A new connection; waits for a free slot under --max-connections-per-host."""
        if self.slots is None or not self.endpoint.is_network:
            return self._open()
        slots = self.slots.of(self.endpoint.host)
        if not slots.acquire(timeout=self.timeout):
            from migrator.errors import ConnectionFailed

            raise ConnectionFailed(f"no free connection to {self.endpoint.host} within {self.timeout:.0f} s "
                                   f"(--max-connections-per-host {self.slots.per_host})")
        try:
            store = self._open()
        except BaseException:
            slots.release()
            raise
        close = store.close
        released: list[bool] = []

        def close_and_release() -> None:
            try:
                close()
            finally:
                if not released:
                    released.append(True)
                    slots.release()

        # The slot goes back when this connection closes, whichever kind of store it is: its own
        # close() is wrapped on the instance (a wrapper class would have to forward every method).
        store.close = close_and_release  # type: ignore[method-assign]  # on purpose: see the comment above
        return store

    def _open(self) -> Store:
        scheme = _kind(self.endpoint)
        if scheme == "imap":
            from migrator.stores.connection import ConnectOptions
            from migrator.stores.gmail import GmailCapableStore

            opts = ConnectOptions(
                ca_file=self.ca_file,
                insecure=self.insecure,
                allow_plaintext=self.allow_plaintext,
                timeout=self.timeout,
                auth_user=self.auth_user,
                oauth2_token_cmd=self.secret.oauth2_token_cmd,
                compress=self.compress,
                labels_as_keywords=self.labels_as_keywords,
            )
            return GmailCapableStore(self.endpoint, self._credentials(), opts)
        if scheme == "pop3":
            from migrator.stores.connection import ConnectOptions
            from migrator.stores.pop3 import Pop3Store

            opts = ConnectOptions(ca_file=self.ca_file, insecure=self.insecure,
                                  allow_plaintext=self.allow_plaintext, timeout=self.timeout)
            return Pop3Store(self.endpoint, self._credentials(), opts)
        from migrator.stores.archive import ArchiveStore

        # A source archive must exist, and is only read; a destination archive is created on first use.
        source = self.secret.role != "dst"
        return ArchiveStore(self.endpoint.path, create=not source, readonly=source or self.readonly,
                            as_of=self.as_of, snapshot=self.snapshot, encrypt_to=() if source else self.encrypt_to,
                            identity=self.identity,
                            reads_bodies=(source or self.readonly) and not self.digests_only)


def _say(line: str) -> None:
    """A sign-in's instructions go to the terminal at once, as a password prompt would."""
    print(line, file=sys.stderr, flush=True)


def _kind(ep: Endpoint) -> str:
    """Which store serves this endpoint: imap, pop3 or archive."""
    kind = {"imap": "imap", "imaps": "imap", "pop3": "pop3", "pop3s": "pop3", "archive": "archive"}.get(ep.scheme)
    if kind is None:
        raise UsageError(f"{ep.url()}: {ep.scheme}:// is not supported yet")
    return kind


def encrypts_at_rest(ep: Endpoint) -> bool:
    """The store serving `ep` can be encrypted at rest (--encrypt-to, --identity): an archive."""
    return _kind(ep) == "archive"


def check_readable(ep: Endpoint, identity: str | None) -> None:
    """A source to be read: an encrypted archive without --identity, or with one that is none of
    its recipients', is refused now, before the destination is touched (its store would refuse
    it too, when it opens)."""
    if _kind(ep) != "archive":
        return
    from migrator.stores.archive_crypt import Opener, needs_identity
    from migrator.stores.archive_index import recipients_at

    recipients = recipients_at(ep.path)
    if recipients and identity is None:
        raise needs_identity(ep.path, "reading it")
    if recipients and identity is not None:
        Opener(identity, recipients)


def advertised(ep: Endpoint) -> Capabilities:
    """What the store serving `ep` can do, known before connecting (writable, sessions): what the
    runner checks a plan against. A connected store's own `capabilities` say more."""
    if _kind(ep) == "pop3":
        from migrator.stores.pop3 import Pop3Store

        return Pop3Store.ADVERTISED
    archive = _kind(ep) == "archive"
    return Capabilities(keeps_history=archive, live=not archive)

