"""Microsoft's sign-in (Entra ID) through msal: the device-code flow, then refresh tokens.

msal keeps tokens in its own in-memory cache object, which is never serialized here: the refresh
token migrator keeps goes to the keyring (TokenSession), and acquire_token_by_refresh_token starts
each run from it. msal adds the reserved scopes itself (offline_access, openid, profile): it is
given the IMAP scope only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from migrator.errors import ConnectionFailed, UsageError
from migrator.oauth2 import SCOPES, Flow, OAuth2Config, Tokens

AUTHORITY = "https://login.microsoftonline.com"
IMAP_SCOPE = SCOPES["microsoft"].split()[0]  # offline_access is msal's to add


class MicrosoftFlow(Flow):
    def __init__(self, cfg: OAuth2Config, login_hint: str, test_url: str | None = None):
        self.cfg, self.login_hint, self.test_url = cfg, login_hint, test_url
        self._app = None

    def _client(self):
        if self._app is None:
            try:
                import msal
            except ImportError:
                raise UsageError("--*-oauth2 microsoft needs the msal package",
                                 hint="pip install 'migrator[oauth2]'") from None
            base = self.test_url or AUTHORITY
            # A stand-in authority (tests only) is not one Microsoft knows: no discovery against it.
            known = {} if self.test_url is None else {"validate_authority": False, "instance_discovery": False}
            try:
                self._app = msal.PublicClientApplication(self.cfg.client_id, authority=f"{base}/{self.cfg.tenant}",
                                                         **known)
            except Exception as e:  # msal's discovery: network errors, an unknown tenant (ValueError)
                raise ConnectionFailed(f"cannot reach Microsoft's sign-in service for tenant "
                                       f"'{self.cfg.tenant}': {_first_line(e)}") from None
        return self._app

    def sign_in(self, say: Callable[[str], None]) -> Tokens:
        app = self._client()
        flow = _call(lambda: app.initiate_device_flow(scopes=[IMAP_SCOPE]))
        if "user_code" not in flow:
            raise ConnectionFailed(f"Microsoft refused to start a sign-in: {_why(flow)}",
                                   hint="check --oauth2-client-id and that the app allows public client flows")
        minutes = max(1, int(flow.get("expires_in", 900)) // 60)
        say(f"To let migrator read {self.login_hint}: open {flow['verification_uri']} in any browser and enter "
            f"the code {flow['user_code']} (waiting up to {minutes} min)")
        result = _call(lambda: app.acquire_token_by_device_flow(flow))
        if "access_token" not in result:
            raise ConnectionFailed(f"Microsoft sign-in of {self.login_hint} failed: {_why(result)}")
        return _tokens(result)

    def refresh(self, refresh_token: str) -> Tokens | None:
        app = self._client()
        result = _call(lambda: app.acquire_token_by_refresh_token(refresh_token, scopes=[IMAP_SCOPE]))
        return _tokens(result) if "access_token" in result else None


def _call(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception as e:  # requests' connection and TLS errors, raised through msal
        raise ConnectionFailed(f"cannot reach Microsoft's sign-in service: {_first_line(e)}") from None


def _tokens(result: dict) -> Tokens:
    return Tokens(result["access_token"], time.time() + float(result.get("expires_in", 3600)),
                  result.get("refresh_token"))


def _why(result: dict) -> str:
    """The provider's error, its first line (Entra appends trace and correlation IDs)."""
    return _first_line(result.get("error_description") or result.get("error") or "no reason given")


def _first_line(e: object) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
