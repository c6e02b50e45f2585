"""A stand-in for Microsoft's and Google's OAuth2 services (we can reach neither), on 127.0.0.1.

Over HTTPS with a trustme certificate (`ca_file`), it answers what migrator's built-in sign-in
asks (migrator/oauth2/), the way the real services are documented to:
- Microsoft (msal, authority `{url}/{tenant}`): the OpenID configuration, the device-code endpoint
  (a user code to enter at `verification_uri`; polling answers `authorization_pending` until the
  test calls `approve(user_code)`, as a person signing in would), and the token endpoint (device
  code and refresh-token grants; the refresh token rotates at each refresh, as Entra's does);
- Google (`{url}/google/auth`, `{url}/google/token`): the authorization page, which sends the
  browser straight back to the app's loopback `redirect_uri` with a code (the test plays the
  browser), and the token endpoint (authorization code with PKCE S256 checked, refresh grants).
Access tokens expire after `lifetime` seconds. A plain-HTTP introspection endpoint
(`introspection_url`, RFC 7662) lets Dovecot's oauth2 passdb check them: a token is active until
it expires, and, with `max_uses`, for that many logins only (a token refused early, at a
reconnect). It records the grants it served (`grants`) and every token it issued.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme


class OAuth2StandIn:
    def __init__(self, lifetime: float = 3600.0):
        self.lifetime = lifetime
        self.account = ""  # who signs in: the test sets the mailbox user
        self.max_uses: int | None = None
        self.lock = threading.Lock()
        self.access: dict[str, tuple[str, float]] = {}  # token -> (user, expires at)
        self.uses: dict[str, int] = {}
        self.refresh: dict[str, str] = {}  # live refresh token -> user
        self.issued_refresh: list[str] = []
        self.devices: dict[str, dict] = {}  # device_code -> {"user_code", "approved"}
        self.codes: dict[str, tuple[str, str]] = {}  # Google auth code -> (user, code_challenge)
        self.grants: list[str] = []
        self.seen: list[tuple[str, bool]] = []  # introspection: (token, active)
        ca = trustme.CA()
        self._ca = ca
        self.https = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.https.socket = ctx.wrap_socket(self.https.socket, server_side=True)
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        for server in (self.https, self.http):
            server.standin = self  # type: ignore[attr-defined]
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https.server_address[1]}"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/introspect"

    def write_ca(self, path) -> str:
        self._ca.cert_pem.write_to_path(str(path))
        return str(path)

    def close(self) -> None:
        for server in (self.https, self.http):
            server.shutdown()
            server.server_close()

    # -- what a person does ------------------------------------------------------------------
    def approve(self, user_code: str) -> bool:
        with self.lock:
            for device in self.devices.values():
                if device["user_code"] == user_code:
                    device["approved"] = True
                    return True
        return False

    # -- the endpoints -----------------------------------------------------------------------
    def _issue(self, user: str, grant: str) -> dict:
        with self.lock:
            self.grants.append(grant)
            access, refresh = f"at-{secrets.token_hex(8)}", f"rt-{secrets.token_hex(8)}"
            self.access[access] = (user, time.monotonic() + self.lifetime)
            self.refresh[refresh] = user
            self.issued_refresh.append(refresh)
        return {"token_type": "Bearer", "access_token": access, "refresh_token": refresh,
                "expires_in": self.lifetime, "scope": "imap"}

    def token(self, form: dict[str, str]) -> tuple[int, dict]:
        grant = form.get("grant_type", "")
        if grant == "refresh_token":
            with self.lock:
                user = self.refresh.pop(form.get("refresh_token", ""), None)  # rotated: each is used once
            return (200, self._issue(user, "refresh")) if user else (400, {"error": "invalid_grant"})
        if grant.endswith("device_code"):
            with self.lock:
                device = self.devices.get(form.get("device_code", ""))
            if device is None:
                return 400, {"error": "expired_token"}
            if not device["approved"]:
                return 400, {"error": "authorization_pending"}
            with self.lock:
                del self.devices[form["device_code"]]
            return 200, self._issue(self.account, "device_code")
        if grant == "authorization_code":
            with self.lock:
                user, challenge = self.codes.pop(form.get("code", ""), ("", ""))
            verifier = form.get("code_verifier", "").encode()
            made = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
            if not user or made != challenge:
                return 400, {"error": "invalid_grant"}
            return 200, self._issue(user, "authorization_code")
        return 400, {"error": "unsupported_grant_type"}

    def device_code(self) -> dict:
        code, user_code = secrets.token_hex(8), f"{secrets.randbelow(10**8):08d}"
        with self.lock:
            self.devices[code] = {"user_code": user_code, "approved": False}
        return {"device_code": code, "user_code": user_code, "verification_uri": f"{self.url}/devicelogin",
                "expires_in": 900, "interval": 1, "message": "see verification_uri"}

    def authorize(self, query: dict[str, str]) -> str:
        """The browser's visit: straight back to the app, signed in as `account`."""
        code = secrets.token_hex(8)
        with self.lock:
            self.codes[code] = (self.account, query["code_challenge"])
        back = urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
        return f"{query['redirect_uri']}?{back}"

    def introspect(self, token: str) -> dict:
        with self.lock:
            user, expires = self.access.get(token, ("", 0.0))
            active = bool(user) and time.monotonic() < expires
            if active and self.max_uses is not None and self.uses.get(token, 0) >= self.max_uses:
                active = False
            if active:
                self.uses[token] = self.uses.get(token, 0) + 1
            self.seen.append((token, active))
        return {"active": "true", "username": user} if active else {"active": "false"}

    def openid(self, tenant: str) -> dict:
        base = f"{self.url}/{tenant}"
        return {"issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode"}


class _Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: dict | None = None, location: str | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        standin: OAuth2StandIn = self.server.standin  # type: ignore[attr-defined]
        parts = urllib.parse.urlsplit(self.path)
        if parts.path.endswith("/v2.0/.well-known/openid-configuration"):
            self._send(200, standin.openid(parts.path.strip("/").split("/")[0]))
        elif parts.path == "/google/auth":
            query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
            self._send(302, location=standin.authorize(query))
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self):  # noqa: N802
        standin: OAuth2StandIn = self.server.standin  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
        path = urllib.parse.urlsplit(self.path).path
        if path == "/introspect":
            self._send(200, standin.introspect(form.get("token", "")))
        elif path.endswith("/oauth2/v2.0/devicecode"):
            self._send(200, standin.device_code())
        elif path.endswith("/token"):
            self._send(*standin.token(form))
        else:
            self._send(404, {"error": "not_found"})

    def log_message(self, *args):
        pass
