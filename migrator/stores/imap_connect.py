"""Opening one IMAP connection: TLS or STARTTLS (the rule is connection.py's), the greeting's
capabilities, login (SASL PLAIN, with LOGIN as the fallback; XOAUTH2 / OAUTHBEARER with a token),
COMPRESS and the personal namespace (asked once per account). Everything below the libraries'
public API goes through imap_wire.Wire."""

from __future__ import annotations

import imaplib
import logging
import threading
from collections.abc import Callable

from imapclient import exceptions as imapexc

from migrator.accounts import Endpoint
from migrator.errors import ConnectionFailed
from migrator.stores.connection import (
    ConnectOptions,
    Credentials,
    connect_failed,
    server_text,
    stay_plain,
    tls_context,
    upgrade_failed,
    warn_once,
)
from migrator.stores.imap_parse import dec, text
from migrator.stores.imap_wire import Wire

log = logging.getLogger("migrator.imap")


def connect(ep: Endpoint, creds: Credentials, opts: ConnectOptions) -> Wire:
    """Open, secure and authenticate one IMAP connection (the TLS rule: connection.stay_plain)."""
    ctx = tls_context(ep, opts)
    try:
        wire = Wire.open(ep.host, ep.port, ep.implicit_tls, ctx, opts.timeout)
    except (OSError, imaplib.IMAP4.error) as e:
        raise connect_failed(e, ep) from None
    try:
        if not ep.implicit_tls and not stay_plain(ep, opts, lambda: "STARTTLS" in wire.login_capabilities(),
                                                  "STARTTLS"):
            _starttls(wire, ep, ctx)
        _authenticate(wire, ep, creds, opts)
    except _AuthUnusable as e:
        # The answer to AUTHENTICATE could not be read (GNU imap4d ends its success line in a bare
        # LF): the session's state is unknown, so this connection is dropped and a new one logs in
        # with LOGIN, which the same TLS rule already allowed. Remembered for the run's other
        # connections, so each does not pay the failed attempt again.
        wire.shutdown()
        with _login_only_lock:
            first = (ep.host, ep.port) not in _login_only
            _login_only.add((ep.host, ep.port))
        if first:
            warn_once(log, f"{ep.host}:{ep.port}: {e}; logging in with LOGIN instead")
        return connect(ep, creds, opts)
    except ConnectionFailed:
        wire.shutdown()
        raise
    except (OSError, imaplib.IMAP4.abort) as e:
        wire.shutdown()
        raise connect_failed(e, ep) from None
    return wire


# (host, port, user, auth_user) -> (separator, prefix) of the account's personal namespace
_namespaces: dict[tuple, tuple[str | None, str]] = {}
_namespaces_lock = threading.Lock()


def namespace(ep: Endpoint, opts: ConnectOptions, ask: Callable[[], tuple[str | None, str]]) -> tuple[str | None, str]:
    """(separator, prefix) of the personal namespace, ask()ed once per account and run: every
    worker connection of the account gets the same answer (a round trip less per login)."""
    key = (ep.host.lower(), ep.port, ep.user, opts.auth_user)
    with _namespaces_lock:
        known = _namespaces.get(key)
    if known is None:
        known = ask()
        with _namespaces_lock:
            _namespaces[key] = known
    return known


def _starttls(wire: Wire, ep: Endpoint, ctx) -> None:
    try:
        wire.client.starttls(ctx)
    except (OSError, imaplib.IMAP4.error) as e:
        raise upgrade_failed(e, ep, "STARTTLS") from None
    log.debug("STARTTLS with %s:%s done (%s)", ep.host, ep.port, wire.tls_version())


def start_compression(wire: Wire, ep: Endpoint) -> bool:
    """COMPRESS DEFLATE (RFC 4978); False, with a warning once per run, if the server refuses."""
    try:
        typ, data = wire.compress()
    except (imaplib.IMAP4.abort, OSError) as e:
        raise ConnectionFailed(f"connection to {ep.host} lost during COMPRESS: {server_text(e)}") from None
    if typ != "OK":
        warn_once(log, f"{ep.host} refused COMPRESS DEFLATE ({text(data)}); continuing uncompressed")
    return typ == "OK"


def _authenticate(wire: Wire, ep: Endpoint, creds: Credentials, opts: ConnectOptions) -> None:
    if creds.is_token:
        _oauth2_login(wire, ep, creds, opts)
        return
    who = f"{ep.user}@{ep.host}" + (f" as '{opts.auth_user}'" if opts.auth_user else "")
    secret = creds.secret()
    caps = wire.login_capabilities()
    try:
        if "AUTH=PLAIN" in caps and (ep.host, ep.port) not in _login_only:
            # Master user: authenticate as auth_user, act as ep.user (SASL authzid, RFC 4616).
            authc, authz = (opts.auth_user, ep.user) if opts.auth_user else (ep.user, "")
            _plain(wire, authc, secret, authz, initial_response="SASL-IR" in caps)
        else:
            if "LOGINDISABLED" in caps:
                raise ConnectionFailed(f"{ep.host} refuses LOGIN on this connection (LOGINDISABLED)")
            # Dovecot's master-user convention for LOGIN: USER*MASTER (auth_master_user_separator).
            user = f"{ep.user}*{opts.auth_user}" if opts.auth_user else ep.user
            wire.client.login(user, secret)
    except imapexc.LoginError as e:
        raise ConnectionFailed(f"login failed for {who}: {server_text(e, secret)}") from None


class _AuthUnusable(Exception):
    """AUTHENTICATE PLAIN got an answer that is not a usable IMAP response (not a NO)."""


# (host, port) whose AUTHENTICATE PLAIN answer could not be read: LOGIN is used there (see connect)
_login_only: set[tuple[str, int]] = set()
_login_only_lock = threading.Lock()


def _plain(wire: Wire, authc: str, secret: str, authz: str, initial_response: bool) -> None:
    """AUTHENTICATE PLAIN (imapclient's logger shows AUTHENTICATE lines as **REDACTED**).

    A NO is a refusal (LoginError, the server's reason). A BAD, or an answer that is not an IMAP
    line at all, says nothing about the credentials: _AuthUnusable, and connect() tries LOGIN."""
    try:
        typ, data = wire.authenticate_plain(f"{authz}\0{authc}\0{secret}", initial_response)
    except imaplib.IMAP4.abort as e:
        raise _AuthUnusable(f"its answer to AUTHENTICATE: not valid IMAP ({_unusable_reason(e)})") from None
    except imaplib.IMAP4.error as e:
        text = str(e)
        if "command error: BAD" in text:
            raise _AuthUnusable("it answered BAD to AUTHENTICATE") from None
        raise imapexc.LoginError(text) from None  # NO, raised by imaplib's authenticate()
    if typ != "OK":
        raise imapexc.LoginError(dec(data[-1]) if data and data[-1] is not None else typ)


def _unusable_reason(e: BaseException) -> str:
    """Why an answer could not be read, without quoting it: it may be a success line, and a
    success line is not a reason."""
    text = str(e)
    if "unterminated line" in text:
        return "a line not ended by CRLF"
    if "EOF" in text or "closed" in text.lower():
        return "the connection closed"
    return text.split(":", 1)[0][:80]


def _oauth2_mech(wire: Wire, opts: ConnectOptions) -> str:
    if opts.oauth2_mech.lower() != "auto":
        return opts.oauth2_mech.upper()
    if "AUTH=OAUTHBEARER" in wire.login_capabilities():
        return "OAUTHBEARER"  # the standard one (RFC 7628)
    return "XOAUTH2"  # Gmail and Microsoft 365 both take it


def _oauth2_responder(mech: str, user: str, token: str) -> Callable[[bytes], str]:
    """SASL client for XOAUTH2 / OAUTHBEARER: the initial response, then the
    acknowledgement the server waits for after an error challenge (a JSON
    status), so the server answers NO instead of seeing the token twice."""
    if mech == "OAUTHBEARER":
        authzid = user.replace("=", "=3D").replace(",", "=2C")
        first, ack = f"n,a={authzid},\x01auth=Bearer {token}\x01\x01", "\x01"
    else:
        first, ack = f"user={user}\x01auth=Bearer {token}\x01\x01", ""
    sent: list[bool] = []

    def respond(_challenge: bytes) -> str:
        if sent:
            return ack
        sent.append(True)
        return first

    return respond


def _oauth2_login(wire: Wire, ep: Endpoint, creds: Credentials, opts: ConnectOptions) -> None:
    mech = _oauth2_mech(wire, opts)
    rejected: str | None = None
    for attempt in (1, 2):
        token = creds.secret(stale=rejected)
        try:
            wire.client.sasl_login(mech, _oauth2_responder(mech, ep.user, token))
            return
        except imapexc.LoginError as e:
            if attempt == 1:
                # Expired or revoked: a fresh token (the command run again, or a refresh), once.
                log.info("%s token for %s rejected; getting a fresh one", mech, ep.user)
                rejected = token
                continue
            raise ConnectionFailed(
                f"{mech} login failed for {ep.user}@{ep.host} even with a fresh token: {server_text(e, token)}",
                hint="check the token command or the app registration, the account name and the token's scopes",
            ) from None

