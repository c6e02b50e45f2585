"""Account URLs: imaps://user@host[:port], imap://user@host[:port], pop3(s)://, archive paths.

An Endpoint is what a plan stores about one side: where it is and how its
secret is found (an env var name or a file path), never the secret itself.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass

from migrator.errors import UsageError

DEFAULT_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}
NETWORK_SCHEMES = tuple(DEFAULT_PORTS)
ARCHIVE_SCHEMES = ("archive",)


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # imaps | imap | pop3s | pop3 | archive
    user: str = ""
    host: str = ""
    port: int = 0
    path: str = ""  # archive directory, for scheme 'archive'

    @property
    def is_network(self) -> bool:
        return self.scheme in NETWORK_SCHEMES

    @property
    def implicit_tls(self) -> bool:
        return self.scheme in ("imaps", "pop3s")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def url(self) -> str:
        """The URL without any secret; safe to print, log and store."""
        if self.scheme == "archive":
            return f"archive://{self.path}"
        user = urllib.parse.quote(self.user, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS[self.scheme]
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{user}@{host}{port}"

    def __str__(self) -> str:
        return self.url()


# TEST-ONLY seam: a comma-separated list of hosts to treat as remote, so the
# STARTTLS rule can be proven against a local test server. Never set it otherwise.
TEST_NONLOCAL_ENV = "MIGRATOR_TEST_NONLOCAL_HOSTS"


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': traffic that never leaves the machine."""
    nonlocal_hosts = os.environ.get(TEST_NONLOCAL_ENV, "")
    if host.lower() in {h.strip().lower() for h in nonlocal_hosts.split(",") if h.strip()}:
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_endpoint(text: str) -> Endpoint:
    """Parse an account URL or archive path; raise UsageError with a one-line reason."""
    text = text.strip()
    if not text:
        raise UsageError("empty account URL")
    if "://" not in text:
        raise UsageError(
            f"'{text}' is not an account URL",
            hint="use imaps://user@host, imap://user@host or archive:///path",
        )
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ARCHIVE_SCHEMES:
        path = urllib.parse.unquote(parts.netloc + parts.path)
        if not path:
            raise UsageError(f"'{text}': an archive URL needs a path, e.g. archive:///backups/alice")
        return Endpoint(scheme="archive", path=path)
    if scheme not in NETWORK_SCHEMES:
        raise UsageError(
            f"'{text}': unknown scheme '{parts.scheme}'",
            hint="use imaps://, imap://, pop3s://, pop3:// or archive://",
        )
    if parts.password is not None:
        raise UsageError(
            f"'{_without_password(parts)}': do not put the password in the URL",
            hint="use MIGRATOR_SRC_PASSWORD / MIGRATOR_DST_PASSWORD or --src-password-file / --dst-password-file",
        )
    if not parts.username:
        raise UsageError(f"'{text}': no user name (expected {scheme}://user@host)")
    try:
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"'{text}': the port is not a number between 1 and 65535") from None
    if not host:
        raise UsageError(f"'{text}': no host name")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"'{text}': unexpected path or query after the host")
    return Endpoint(scheme=scheme, user=urllib.parse.unquote(parts.username), host=host, port=port)


def _without_password(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.username}:***@{host}{port}"
