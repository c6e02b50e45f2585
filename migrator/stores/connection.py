"""What the network stores (IMAP, POP3) share about connecting, written once for both.

- ConnectOptions and Credentials: how one side connects and the secret it logs in with.
- The TLS rule (tls_context, stay_plain, upgrade_failed): certificates are verified by default;
  imaps:// and pop3s:// are TLS from the first byte; imap:// and pop3:// to a non-loopback host
  must upgrade (STARTTLS, STLS) before the password is sent, or log in over plaintext only with
  --allow-plaintext, saying the same warning for both protocols once per run; to loopback
  (127.0.0.0/8, ::1) they may stay plain, the traffic never leaves the machine.
- How a failed connection is described to the user (describe_os_error, tls_hint, server_text)
  and mapped onto migrator's errors (connect_failed, connection_lost).
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from migrator.accounts import Endpoint
from migrator.errors import ConnectionFailed, TransientError, UsageError

log = logging.getLogger("migrator.connection")


@dataclass(frozen=True)
class ConnectOptions:
    ca_file: str | None = None
    insecure: bool = False
    allow_plaintext: bool = False
    timeout: float = 120.0
    auth_user: str | None = None  # admin / master user: authenticates as this, acts as endpoint.user
    oauth2_token_cmd: str | None = None
    oauth2_mech: str = "auto"  # auto: OAUTHBEARER when the server offers it, else XOAUTH2
    compress: bool = False  # COMPRESS=DEFLATE (RFC 4978) when offered
    labels_as_keywords: bool = False  # Gmail: every label also kept as a keyword (stores/gmail.py)


class Credentials:
    """Produces the secret on demand, in memory only; shared by all connections of one side.

    A token from an OAuth2 command is fetched again when a server rejects it
    (expired or revoked), so a long unattended run survives token expiry. A built-in sign-in
    (`session`, oauth2.TokenSession) is asked every time: it keeps its token fresh itself.
    """

    def __init__(self, password: Callable[[], str] | None = None, token: Callable[[], str] | None = None,
                 session=None):
        self._password = password
        self._token = token
        self._session = session
        self._cached: str | None = None
        self._lock = threading.Lock()  # worker threads log in concurrently

    def secret(self, stale: str | None = None) -> str:
        """The current secret. If STALE (a token a server just rejected) is still the
        current one, get a new one first; if another thread already did, reuse that."""
        if self._session is not None:
            return self._session.token(stale)
        with self._lock:
            if self._cached is None or (stale is not None and self._cached == stale):
                source = self._token or self._password
                if source is None:
                    raise UsageError("no password or token source configured")
                self._cached = source()
            return self._cached

    @property
    def is_token(self) -> bool:
        return self._token is not None or self._session is not None


# -- the TLS rule ------------------------------------------------------------------------------

def make_ssl_context(opts: ConnectOptions) -> ssl.SSLContext:
    """TLS 1.2 or newer; verifies chain and host name against the system store (+ --ca-file)."""
    return _ssl_context(opts.ca_file, opts.insecure)


# Keyed by what the context depends on only, so the --ca-file check and every connection of both
# sides and both protocols share one: loading the system CA store costs ~50 ms of CPU.
@functools.lru_cache(maxsize=16)
def _ssl_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context()
        if ca_file:
            # Added to the system store, not instead of it: one side may be a public
            # provider (Gmail) and the other a private server.
            try:
                ctx.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or "not a PEM certificate file"
                raise UsageError(f"cannot load --ca-file {ca_file}: {reason}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def tls_context(ep: Endpoint, opts: ConnectOptions) -> ssl.SSLContext | None:
    """The context a connection may need: none for plain loopback, which never upgrades (loading
    the CA store is ~35 ms before the first login)."""
    return make_ssl_context(opts) if ep.implicit_tls or not ep.is_loopback else None


def stay_plain(ep: Endpoint, opts: ConnectOptions, offered: Callable[[], bool], upgrade: str) -> bool:
    """The TLS rule for a connection that did not start in TLS (imap://, pop3://), before anything
    secret is sent. False: it must upgrade now with `upgrade` (STARTTLS, STLS), which the server
    offers. True: it may stay plain (loopback; or --allow-plaintext, warned once per run). Raises
    ConnectionFailed when it can do neither. offered() is asked only for a non-loopback host."""
    if ep.is_loopback:
        return True  # local server or SSH tunnel: plain is fine (documented rule)
    if offered():
        return False
    where = f"{ep.host}:{ep.port}"
    if not opts.allow_plaintext:
        raise ConnectionFailed(
            f"{where} does not offer {upgrade}; refusing to log in without TLS",
            hint=f"use {ep.scheme}s://, or --allow-plaintext if you accept that the password crosses the network "
                 "in clear",
        )
    warn_once(log, f"logging in to {where} without TLS (--allow-plaintext)")
    return True


def upgrade_failed(e: BaseException, ep: Endpoint, upgrade: str) -> ConnectionFailed:
    """STARTTLS / STLS failed. Never fall back to plain then, even with --allow-plaintext: a failed
    handshake is what an attacker stripping TLS produces. --insecure is the explicit way to accept
    a certificate that does not verify."""
    detail = describe_os_error(e, ep) if isinstance(e, OSError) else server_text(e)
    return ConnectionFailed(f"{upgrade} with {ep.host}:{ep.port} failed ({detail}); not logging in", hint=tls_hint(e))


# -- errors --------------------------------------------------------------------------------------

def connect_failed(e: BaseException, ep: Endpoint) -> ConnectionFailed:
    """A connection that could not be opened or secured (socket, DNS, TLS)."""
    return ConnectionFailed(describe_os_error(e, ep), hint=tls_hint(e))


def connection_lost(host: str, what: str, e: BaseException) -> TransientError:
    """An open connection lost in the middle of `what`: the engine reconnects and tries again."""
    return TransientError(f"connection to {host} lost during {what}: {server_text(e)}")


def describe_os_error(e: BaseException, ep: Endpoint) -> str:
    where = f"{ep.host}:{ep.port}"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host '{ep.host}'"
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out connecting to {where}"
    if isinstance(e, ssl.SSLCertVerificationError):
        why = (e.verify_message or str(e.reason or e)).rstrip(".")
        return f"TLS certificate of {where} rejected: {why}"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake with {where} failed: {e.reason or e}"
    return f"cannot connect to {where}: {getattr(e, 'strerror', None) or e}"


# OpenSSL verify codes that need another hint than "trust the CA".
_X509_NOT_YET_VALID, _X509_EXPIRED = 9, 10
_X509_HOST_MISMATCH, _X509_IP_MISMATCH = 62, 64


def tls_hint(e: BaseException) -> str | None:
    if not isinstance(e, ssl.SSLCertVerificationError):
        return None
    if e.verify_code in (_X509_NOT_YET_VALID, _X509_EXPIRED):
        return "the server's certificate is outside its validity period and must be renewed (check the clock too)"
    if e.verify_code in (_X509_HOST_MISMATCH, _X509_IP_MISMATCH):
        return "connect with the host name the certificate was issued for"
    return "use --ca-file PEM for a private CA, or --insecure for a test server you trust"


def server_text(e: BaseException, secret: str | None = None) -> str:
    """A library error's text as the server said it (poplib's error is the answer line, imaplib's
    quotes it), the secret masked, cut to 200 characters."""
    arg = e.args[0] if e.args else None
    if isinstance(arg, bytes):  # poplib: the answer line itself
        text = arg.decode("utf-8", "replace")
    else:  # imaplib: "... command error: BAD [b'the answer']"
        text = str(e)
        m = re.search(r"b?['\"](.*)['\"]", text)
        if m:
            text = m.group(1)
    if secret:
        text = text.replace(secret, "***")
    return text[:200]


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(logger: logging.Logger, text: str) -> None:
    """Each worker connects on its own: say a warning once per run, not once per connection."""
    with _warned_lock:
        if text in _warned:
            return
        _warned.add(text)
    logger.warning("%s", text)
