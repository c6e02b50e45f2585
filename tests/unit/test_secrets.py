"""Pure parts of issue 6: secret sources, masking, TLS context, the loopback test seam, file modes.

Behaviour against a server is proven in tests/e2e/test_security.py."""

from __future__ import annotations

import logging
import os
import ssl
import stat

import pytest

from migrator import secrets
from migrator.accounts import is_loopback_host
from migrator.errors import ConnectionFailed, UsageError
from migrator.fsutil import ensure_private_dir, write_private
from migrator.logsafe import SecretMaskFilter
from migrator.secrets import SecretSource, get_password, read_password_file, run_token_command
from migrator.stores.connection import ConnectOptions, Credentials, make_ssl_context
from migrator.stores.imap_connect import _oauth2_responder

PW = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for role in ("SRC", "DST"):
        monkeypatch.delenv(f"MIGRATOR_{role}_PASSWORD", raising=False)
    monkeypatch.delenv("MIGRATOR_TEST_NONLOCAL_HOSTS", raising=False)
    monkeypatch.setattr(secrets, "_from_keyring", lambda name: None)  # never the developer's real keyring


# ----------------------------------------------------------------- password file
@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o400, True), (0o640, False), (0o604, False), (0o660, False)])
def test_password_file_modes(tmp_path, mode, ok):
    f = tmp_path / "pw"
    f.write_text(PW + "\nsecond line ignored\n")
    f.chmod(mode)
    if ok:
        assert read_password_file(str(f)) == PW
    else:
        with pytest.raises(UsageError) as e:
            read_password_file(str(f))
        assert f"mode {mode:o}" in str(e.value) and e.value.hint == f"chmod 600 {f}"
        assert PW not in str(e.value)


def test_missing_password_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read password file"):
        read_password_file(str(tmp_path / "nope"))


# ----------------------------------------------------------------- source order
def test_file_wins_over_env_and_env_over_keyring(tmp_path, monkeypatch):
    f = tmp_path / "pw"
    f.write_text("from-file")
    f.chmod(0o600)
    monkeypatch.setenv("MIGRATOR_SRC_PASSWORD", "from-env")
    monkeypatch.setattr(secrets, "_from_keyring", lambda name: "from-keyring")
    assert get_password(SecretSource("src", str(f)), "label", "u@h", interactive=False) == "from-file"
    assert get_password(SecretSource("src"), "label", "u@h", interactive=False) == "from-env"
    monkeypatch.delenv("MIGRATOR_SRC_PASSWORD")
    assert get_password(SecretSource("src"), "label", "u@h", interactive=False) == "from-keyring"


def test_keyring_with_a_file_backend(tmp_path, monkeypatch):
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend

    class MemoryKeyring(KeyringBackend):
        priority = 1
        store = {("migrator", "alice@mail.example"): PW}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    monkeypatch.undo()  # use the real _from_keyring
    for role in ("SRC", "DST"):
        monkeypatch.delenv(f"MIGRATOR_{role}_PASSWORD", raising=False)
    old = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        name = secrets.keyring_name("alice", "mail.example")
        assert get_password(SecretSource("dst"), "imaps://alice@mail.example", name, interactive=False) == PW
        with pytest.raises(UsageError, match="no password"):
            get_password(SecretSource("dst"), "imaps://bob@mail.example", "bob@mail.example", interactive=False)
    finally:
        keyring.set_keyring(old)


def test_no_source_and_no_tty_is_a_usage_error_never_a_prompt(monkeypatch):
    def no_prompt(*a, **k):
        raise AssertionError("prompted")

    monkeypatch.setattr(secrets.getpass, "getpass", no_prompt)
    with pytest.raises(UsageError) as e:
        get_password(SecretSource("dst"), "imaps://a@h", "a@h", interactive=False)
    assert "MIGRATOR_DST_PASSWORD" in e.value.hint and "--dst-password-file" in e.value.hint
    assert "keyring set migrator a@h" in e.value.hint


def test_prompt_only_when_interactive(monkeypatch):
    asked = []
    monkeypatch.setattr(secrets.getpass, "getpass", lambda prompt: asked.append(prompt) or PW)
    assert get_password(SecretSource("src"), "imaps://a@h", "a@h", interactive=True) == PW
    assert asked == ["Password for imaps://a@h: "]


def test_describe_names_the_place_not_the_secret(tmp_path):
    assert SecretSource("src").describe() == {"password_env": "MIGRATOR_SRC_PASSWORD"}
    assert SecretSource("src", "/x/pw").describe() == {"password_file": "/x/pw"}
    assert SecretSource("src", None, "get-token").describe() == {"oauth2_token_cmd": "get-token"}


# ----------------------------------------------------------------- token command
def test_token_command_first_line_and_no_passwords_in_its_env(monkeypatch):
    monkeypatch.setenv("MIGRATOR_SRC_PASSWORD", PW)
    assert run_token_command("printf 'tok-1\\nignored\\n'") == "tok-1"
    assert run_token_command('printf "%s" "${MIGRATOR_SRC_PASSWORD:-none}"') == "none"


@pytest.mark.parametrize("cmd, text", [("exit 4", "exit 4"), ("true", "printed no token")])
def test_token_command_failures(cmd, text):
    with pytest.raises(ConnectionFailed, match=text):
        run_token_command(cmd)


def test_credentials_refresh_only_a_stale_token():
    calls = []

    def fetch():
        calls.append(1)
        return f"t{len(calls)}"

    c = Credentials(token=fetch)
    assert c.secret() == "t1" and c.secret() == "t1"
    assert c.secret(stale="t1") == "t2"  # rejected: fetch a new one
    assert c.secret(stale="t1") == "t2"  # another thread already refreshed: reuse it
    assert len(calls) == 2


def test_oauth2_responders():
    x = _oauth2_responder("XOAUTH2", "alice", "TOK")
    assert x(b"") == "user=alice\x01auth=Bearer TOK\x01\x01"
    assert x(b'{"status":"401"}') == ""  # acknowledge the error challenge, never resend the token
    o = _oauth2_responder("OAUTHBEARER", "a,b=c", "TOK")
    assert o(b"") == "n,a=a=2Cb=3Dc,\x01auth=Bearer TOK\x01\x01"
    assert o(b"{}") == "\x01"


# ----------------------------------------------------------------- TLS
def test_ssl_context_verifies_and_requires_tls12():
    ctx = make_ssl_context(ConnectOptions())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    insecure = make_ssl_context(ConnectOptions(insecure=True))
    assert insecure.verify_mode == ssl.CERT_NONE and insecure.minimum_version == ssl.TLSVersion.TLSv1_2


def test_ssl_context_adds_ca_file_to_the_system_store(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    base = make_ssl_context(ConnectOptions()).cert_store_stats()["x509_ca"]
    ctx = make_ssl_context(ConnectOptions(ca_file=str(path)))
    assert ctx.cert_store_stats()["x509_ca"] == base + 1


def test_loopback_and_the_test_seam(monkeypatch):
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("192.0.2.1") and not is_loopback_host("mail.example.com")
    monkeypatch.setenv("MIGRATOR_TEST_NONLOCAL_HOSTS", "127.0.0.1, ::1")
    assert not is_loopback_host("127.0.0.1") and not is_loopback_host("::1")
    assert is_loopback_host("127.0.0.2")


# ----------------------------------------------------------------- masking
@pytest.mark.parametrize("line, secret", [
    ("> b'ABCD1 LOGIN alice s3cr3t-Pa55'", PW),
    ('> b\'ABCD1 LOGIN "alice" "s3cr3t \\"Pa55"\'', 's3cr3t \\"Pa55'),
    ("> b'ABCD2 AUTHENTICATE PLAIN AGFsaWNlAHMzY3IzdC1QYTU1'", "AGFsaWNlAHMzY3IzdC1QYTU1"),
    ("> b'AGFsaWNlAHMzY3IzdC1QYTU1'", "AGFsaWNlAHMzY3IzdC1QYTU1"),
])
def test_mask_filter_hides_credentials(line, secret):
    rec = logging.LogRecord("imapclient.imaplib", logging.DEBUG, __file__, 1, "%s", (line,), None)
    SecretMaskFilter().filter(rec)
    assert secret not in rec.getMessage() and "***" in rec.getMessage()


def test_mask_filter_leaves_other_lines_alone():
    line = "< b'A1 OK Pre-login capabilities listed, post-login capabilities have more.'"
    rec = logging.LogRecord("imapclient.imaplib", logging.DEBUG, __file__, 1, "%s", (line,), None)
    SecretMaskFilter().filter(rec)
    assert rec.getMessage() == line


# ----------------------------------------------------------------- file modes
def test_private_dirs_and_files_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        target = tmp_path / "a" / "b" / "c" / "report.json"
        write_private(str(target), "{}")
        ensure_private_dir(str(tmp_path / "x" / "y"))
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c", tmp_path / "x", tmp_path / "x" / "y"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left
