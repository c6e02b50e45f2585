"""Where passwords and tokens come from. Secrets live only in memory.

A plan or report records *where* a secret is found (SecretSource.describe()),
never the secret. Sources, first match wins: --{role}-password-file, the
MIGRATOR_{ROLE}_PASSWORD environment variable, the system keyring (if the
`keyring` package is installed and holds one), a prompt on a TTY.
"""

from __future__ import annotations

import getpass
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrator.errors import ConnectionFailed, UsageError

if TYPE_CHECKING:
    from migrator.oauth2 import OAuth2Config


def env_var(role: str) -> str:
    return f"MIGRATOR_{role.upper()}_PASSWORD"


@dataclass(frozen=True)
class SecretSource:
    role: str  # "src" or "dst"
    password_file: str | None = None
    oauth2_token_cmd: str | None = None
    oauth2: OAuth2Config | None = None  # the built-in sign-in (oauth2/): tokens from the keyring

    def describe(self) -> dict[str, str]:
        """Safe to write to a plan: names the place, not the secret."""
        if self.oauth2 is not None:
            return self.oauth2.describe()
        if self.oauth2_token_cmd:
            return {"oauth2_token_cmd": self.oauth2_token_cmd}
        if self.password_file:
            return {"password_file": self.password_file}
        return {"password_env": env_var(self.role)}


def read_password_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"password file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"chmod 600 {path}",
        )
    with open(path, encoding="utf-8") as fh:
        # First line only: a trailing newline is not part of the password.
        return fh.readline().rstrip("\r\n")


KEYRING_SERVICE = "migrator"


def keyring_name(user: str, host: str) -> str:
    """The keyring entry of an account: service 'migrator', user name 'USER@HOST'."""
    return f"{user}@{host}"


def _from_keyring(name: str, service: str = KEYRING_SERVICE) -> str | None:
    try:
        import keyring  # optional dependency
    except ImportError:
        return None
    try:
        return keyring.get_password(service, name)
    except Exception:  # no backend, locked keyring: fall through to the next source
        return None


OAUTH2_SERVICE = "migrator-oauth2"  # refresh tokens of the built-in sign-in (oauth2/), one per account and app


def oauth2_refresh_token(name: str) -> str | None:
    """The refresh token kept for this account and app, if the keyring holds one."""
    return _from_keyring(name, OAUTH2_SERVICE)


def keep_oauth2_refresh_token(name: str, token: str) -> bool:
    """Keep a refresh token in the system keyring (never in a file of ours); False when there is
    no usable keyring: the caller says so, and the token lives in memory for this run only."""
    try:
        import keyring  # optional dependency
    except ImportError:
        return False
    try:
        keyring.set_password(OAUTH2_SERVICE, name, token)
    except Exception:  # no backend (keyring.errors.NoKeyringError), a locked keyring
        return False
    return True


def get_password(source: SecretSource, account_label: str, keyring_user: str | None = None,
                 interactive: bool | None = None) -> str:
    """Return the password for one side, or raise UsageError saying how to give it.

    Sources, first match wins: the password file, the environment variable, the
    keyring (entry KEYRING_SERVICE / keyring_user), a prompt when stdin is a TTY.
    """
    if source.password_file:
        return read_password_file(source.password_file)
    value = os.environ.get(env_var(source.role))
    if value:
        return value
    value = _from_keyring(keyring_user) if keyring_user else None
    if value:
        return value
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:  # never in scripts or CI: stdin is not a terminal there
        return getpass.getpass(f"Password for {account_label}: ")
    raise UsageError(
        f"no password for {account_label}",
        hint=f"set {env_var(source.role)}, use --{source.role}-password-file FILE, "
        f"or store it with: keyring set {KEYRING_SERVICE} {keyring_user or account_label}",
    )


def run_token_command(cmd: str) -> str:
    """Run the user's OAuth2 token command; the first line it prints is the access token.

    Its stderr is passed through (it may need to tell the user something) but
    never parsed or repeated in our messages; the passwords of the run are not
    passed to it.
    """
    env = {k: v for k, v in os.environ.items() if k not in (env_var("src"), env_var("dst"))}
    try:
        out = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        raise ConnectionFailed("the OAuth2 token command did not finish within 120 s") from None
    lines = out.stdout.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if out.returncode != 0 or not token:
        raise ConnectionFailed(
            f"the OAuth2 token command failed (exit {out.returncode}){'' if token else ' and printed no token'}",
            hint="run it by hand to see why",
        )
    return token
