"""Store implementations, and Connector: how a run opens connections to one side."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from migrator.accounts import Endpoint
from migrator.errors import UsageError
from migrator.secrets import SecretSource, get_password, run_token_command
from migrator.stores.base import Store


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
    auth_user: str | None = None
    timeout: float = 120.0
    _creds: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _credentials(self):
        from migrator.stores.imap import Credentials

        with self._lock:
            if self._creds is None:
                if self.secret.oauth2_token_cmd:
                    cmd = self.secret.oauth2_token_cmd
                    self._creds = Credentials(token=lambda: run_token_command(cmd))
                else:
                    password = get_password(self.secret, self.endpoint.url())
                    self._creds = Credentials(password=lambda: password)
            return self._creds

    def open(self) -> Store:
        scheme = self.endpoint.scheme
        if scheme in ("imap", "imaps"):
            from migrator.stores.imap import ConnectOptions, ImapStore

            opts = ConnectOptions(
                ca_file=self.ca_file,
                insecure=self.insecure,
                allow_plaintext=self.allow_plaintext,
                timeout=self.timeout,
                auth_user=self.auth_user,
                oauth2_token_cmd=self.secret.oauth2_token_cmd,
            )
            return ImapStore(self.endpoint, self._credentials(), opts)
        raise UsageError(f"{self.endpoint.url()}: {scheme}:// is not supported yet")
