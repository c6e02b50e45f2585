"""What the network stores (IMAP, POP3) share about connecting: how a failed connection is
described to the user, and warnings said once per run."""

from __future__ import annotations

import logging
import socket
import ssl
import threading

from migrator.accounts import Endpoint


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


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(log: logging.Logger, text: str) -> None:
    """Each worker connects on its own: say a warning once per run, not once per connection."""
    with _warned_lock:
        if text in _warned:
            return
        _warned.add(text)
    log.warning("%s", text)
