"""Google's sign-in for installed apps: a browser, a loopback redirect, PKCE; then refresh tokens.

Google's device flow (for TVs) does not grant the Gmail scope, so the documented flow for a
desktop or command-line app is used: migrator listens on 127.0.0.1 on a free port, prints the
authorization URL, and the browser that signs in is sent back to that port with a one-time code
(checked against `state`, and bound to this run by a PKCE verifier). On a machine without a
browser, forward the printed port over SSH (docs/oauth2.md). The token calls are plain HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

from migrator.errors import ConnectionFailed
from migrator.oauth2 import SCOPES, Flow, OAuth2Config, Tokens

AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
TOKEN_URL = "https://oauth2.googleapis.com/token"
WAIT = 600.0  # seconds a person has to sign in


class GoogleFlow(Flow):
    def __init__(self, cfg: OAuth2Config, login_hint: str, test_url: str | None = None):
        self.cfg, self.login_hint = cfg, login_hint
        self.auth_url = f"{test_url}/google/auth" if test_url else AUTH_URL
        self.token_url = f"{test_url}/google/token" if test_url else TOKEN_URL

    def sign_in(self, say: Callable[[str], None]) -> Tokens:
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        answer: dict[str, str] = {}
        server = _redirect_server(state, answer)
        port = server.server_address[1]
        redirect = f"http://127.0.0.1:{port}/"
        query = urllib.parse.urlencode({
            "client_id": self.cfg.client_id, "redirect_uri": redirect, "response_type": "code",
            "scope": SCOPES["google"], "code_challenge": challenge, "code_challenge_method": "S256",
            "state": state, "access_type": "offline", "prompt": "consent", "login_hint": self.login_hint})
        say(f"To let migrator read {self.login_hint}: open {self.auth_url}?{query} in a browser on this machine "
            f"(elsewhere: ssh -L {port}:127.0.0.1:{port} to it first); waiting up to {WAIT / 60:.0f} min")
        try:
            deadline = time.monotonic() + WAIT
            while not answer and time.monotonic() < deadline:
                server.handle_request()  # one request, or a timeout (server.timeout)
        finally:
            server.server_close()
        if "code" not in answer:
            raise ConnectionFailed(f"Google sign-in of {self.login_hint} did not complete: "
                                   f"{answer.get('error', f'no answer within {WAIT / 60:.0f} min')}")
        body = self._post({"grant_type": "authorization_code", "code": answer["code"], "redirect_uri": redirect,
                           "code_verifier": verifier})
        if "access_token" not in body:
            raise ConnectionFailed(f"Google sign-in of {self.login_hint} failed: {_why(body)}")
        return _tokens(body)

    def refresh(self, refresh_token: str) -> Tokens | None:
        body = self._post({"grant_type": "refresh_token", "refresh_token": refresh_token})
        return _tokens(body) if "access_token" in body else None

    def _post(self, fields: dict[str, str]) -> dict:
        """The token endpoint's JSON answer; an OAuth error answer (HTTP 400/401) is returned too."""
        fields = {"client_id": self.cfg.client_id, **fields}
        secret = self.cfg.client_secret()
        if secret:
            fields["client_secret"] = secret
        req = urllib.request.Request(self.token_url, urllib.parse.urlencode(fields).encode(),
                                     {"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                return json.loads(e.read())
            except ValueError:
                return {"error": f"HTTP {e.code}"}
        except (OSError, ValueError) as e:  # URLError (DNS, refused, TLS), a body that is not JSON
            raise ConnectionFailed(f"cannot reach Google's sign-in service: {getattr(e, 'reason', e)}") from None


def _redirect_server(state: str, answer: dict[str, str]) -> HTTPServer:
    """The loopback listener the browser is sent back to: takes the first answer with our `state`."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            got = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).items()}
            ours = got.get("state") == state
            with lock:
                if ours and not answer:
                    answer.update({k: got[k] for k in ("code", "error") if k in got})
            page = b"Signed in: you may close this window." if ours and "code" in got else b"Not signed in."
            self.send_response(200 if ours else 400)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):  # the URL holds the one-time code: never logged
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 1.0
    return server


def _tokens(body: dict) -> Tokens:
    return Tokens(body["access_token"], time.time() + float(body.get("expires_in", 3600)), body.get("refresh_token"))


def _why(body: dict) -> str:
    return str(body.get("error_description") or body.get("error") or "no reason given")[:200]
