"""OAuth2 without a helper script: a sign-in flow built in for Microsoft and Google (docs/oauth2.md).

`--src-oauth2 microsoft|google` (or `--dst-oauth2`) and the user's own app registration
(`--oauth2-client-id`) give a side a TokenSession instead of a password:

- the first run signs in once: Microsoft's device-code flow (msal: a URL and a code to enter in
  any browser), Google's installed-app flow (a URL opened in a browser, answered on a loopback
  port of this machine; Google's device flow does not grant the Gmail scope);
- the refresh token goes to the system keyring (secrets.py: service `migrator-oauth2`), never to
  a file migrator writes; later runs start from it without asking anyone;
- the access token lives in memory only, and is refreshed before it expires (a connection opened
  within REFRESH_MARGIN of expiry gets a new one) and when a server refuses it at a reconnect's
  AUTHENTICATE (Credentials.secret(stale=...)).

A sign-in is only ever asked for when a run starts (ask_secret): mid-run, an unattended run must
not wait for a person, so a refresh token the provider refuses then fails the connection with
one line saying to run again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from migrator import secrets
from migrator.errors import ConnectionFailed, UsageError

PROVIDERS = ("microsoft", "google")
SCOPES = {
    "microsoft": "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access",
    "google": "https://mail.google.com/",
}
REFRESH_MARGIN = 300.0  # seconds: an access token this close to expiry is replaced first
# Test seam, never for users: the base URL of a stand-in for both providers' endpoints
# (tests/oauth2_standin.py). Unset, the real ones are used.
TEST_URL_ENV = "MIGRATOR_TEST_OAUTH2_URL"


@dataclass(frozen=True)
class OAuth2Config:
    """One side's built-in sign-in: which provider, and the user's app registration with it."""

    provider: str  # "microsoft" or "google"
    client_id: str
    tenant: str = "organizations"  # Microsoft: the directory (tenant ID or domain); Google: unused
    client_secret_file: str | None = None  # Google: the installed app's client secret (mode 0600)

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise UsageError(f"unknown OAuth2 provider '{self.provider}'", hint="use microsoft or google")
        if not self.client_id:
            raise UsageError(f"signing in with {self.provider} needs the client ID of your app registration",
                             hint="give --oauth2-client-id (docs/oauth2.md says how to register one)")

    def describe(self) -> dict[str, str]:
        """Safe to write to a plan: the provider and the app (as --src-oauth2 takes it), never a token."""
        tenant = f":{self.tenant}" if self.provider == "microsoft" and self.tenant != "organizations" else ""
        return {"oauth2": f"{self.provider}:{self.client_id}{tenant}"}

    def client_secret(self) -> str | None:
        return secrets.read_password_file(self.client_secret_file) if self.client_secret_file else None


def parse_oauth2(value: str, client_id: str | None = None, tenant: str | None = None,
                 client_secret_file: str | None = None) -> OAuth2Config:
    """--src-oauth2 / --dst-oauth2: PROVIDER[:CLIENT_ID[:TENANT]]; what it leaves out comes from
    --oauth2-client-id and --oauth2-tenant (one app for both sides unless a side names its own)."""
    provider, _, rest = value.strip().partition(":")
    own_id, _, own_tenant = rest.partition(":")
    return OAuth2Config(provider.lower(), own_id or client_id or "", own_tenant or tenant or "organizations",
                        client_secret_file)


@dataclass(frozen=True)
class Tokens:
    """What a token endpoint answered: the access token, when it expires (time.time()), and a
    refresh token when the provider gave a new one."""

    access: str
    expires_at: float
    refresh: str | None = None


class Flow:
    """A provider's side of it (microsoft.py, google.py)."""

    def sign_in(self, say: Callable[[str], None]) -> Tokens:
        """Ask a person to sign in (print where and how); the tokens once they did."""
        raise NotImplementedError

    def refresh(self, refresh_token: str) -> Tokens | None:
        """New tokens from a refresh token; None when the provider refuses it (revoked, expired)."""
        raise NotImplementedError


def flow_for(cfg: OAuth2Config, login_hint: str) -> Flow:
    if cfg.provider == "microsoft":
        from migrator.oauth2.microsoft import MicrosoftFlow

        return MicrosoftFlow(cfg, login_hint, os.environ.get(TEST_URL_ENV))
    from migrator.oauth2.google import GoogleFlow

    return GoogleFlow(cfg, login_hint, os.environ.get(TEST_URL_ENV))


class TokenSession:
    """The access token of one account, kept fresh for a whole run (what Credentials asks)."""

    def __init__(self, cfg: OAuth2Config, account: str, flow: Flow, say: Callable[[str], None],
                 clock: Callable[[], float] = time.time):
        self.cfg, self.account, self.flow, self.say, self.clock = cfg, account, flow, say, clock
        self.keyring_name = f"{cfg.provider}:{cfg.client_id}:{account}"
        self._access: str | None = None
        self._expires = 0.0
        self._lifetime = 0.0
        self._refresh: str | None = None
        self._started = False  # a sign-in may be asked for only before the run's first token
        self._lock = threading.Lock()
        self.refreshes = 0  # access tokens obtained from a refresh token (reports, tests)

    def token(self, stale: str | None = None) -> str:
        """A valid access token. `stale`: one a server just refused (expired or revoked early)."""
        with self._lock:
            if stale is not None and stale == self._access:
                self._access = None
            margin = min(REFRESH_MARGIN, self._lifetime / 10)
            if self._access is None or self.clock() >= self._expires - margin:
                self._take(self._renewed())
            self._started = True
            assert self._access is not None
            return self._access

    def _renewed(self) -> Tokens:
        if self._refresh is None and not self._started:
            self._refresh = secrets.oauth2_refresh_token(self.keyring_name)
        if self._refresh is not None:
            tokens = self.flow.refresh(self._refresh)
            if tokens is not None:
                self.refreshes += 1
                return tokens
            self._refresh = None
        if self._started:
            raise ConnectionFailed(
                f"{self.cfg.provider} refused to renew the sign-in of {self.account} during the run",
                hint="run the same command again to sign in anew (it resumes where this run stopped)")
        return self.flow.sign_in(self.say)

    def _take(self, tokens: Tokens) -> None:
        self._access = tokens.access
        now = self.clock()
        self._expires, self._lifetime = tokens.expires_at, max(0.0, tokens.expires_at - now)
        if tokens.refresh and tokens.refresh != self._refresh:
            self._refresh = tokens.refresh  # a provider may rotate it at every refresh (Microsoft does)
            if not secrets.keep_oauth2_refresh_token(self.keyring_name, tokens.refresh):
                self.say(f"warning: no system keyring: the {self.cfg.provider} refresh token of {self.account} is "
                         "kept in memory only, so the next run asks you to sign in again (pip install keyring)")


def token_session(cfg: OAuth2Config, account: str, say: Callable[[str], None]) -> TokenSession:
    return TokenSession(cfg, account, flow_for(cfg, account), say)
