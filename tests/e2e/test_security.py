"""Secure by default (issue 6), against real Dovecot: TLS, STARTTLS, master users,
OAuth2 (Dovecot's oauth2 passdb + a local introspection endpoint), secret sources,
no secret in any output or file, private file modes.

Extra Dovecot instances are built by SecDovecot below: the rig's Dovecot with
another server certificate, SSL switched off, or an oauth2 passdb.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import py_compile
import re
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import rig
from tests.conftest import started
from tests.helpers import migrator, simple_message

pytestmark = pytest.mark.e2e

NONLOCAL = {"MIGRATOR_TEST_NONLOCAL_HOSTS": "127.0.0.1"}  # test seam: treat 127.0.0.1 as remote


# --------------------------------------------------------------------------- helpers
class Introspection(ThreadingHTTPServer):
    """OAuth2 token introspection endpoint (RFC 7662 style) for Dovecot's oauth2 passdb.

    With `max_uses` set, a token is rejected after that many logins, as a server
    rejects a token once it has expired."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _IntrospectionHandler)
        self.tokens: dict[str, str] = {}  # token -> user
        self.max_uses: int | None = None
        self.uses: dict[str, int] = {}
        self.seen: list[tuple[str, bool]] = []  # (token, accepted)
        self.lock = threading.Lock()

    def check(self, token: str) -> dict:
        with self.lock:
            user = self.tokens.get(token)
            if user is not None and self.max_uses is not None and self.uses.get(token, 0) >= self.max_uses:
                user = None  # expired
            if user is not None:
                self.uses[token] = self.uses.get(token, 0) + 1
            self.seen.append((token, user is not None))
        return {"active": "true", "username": user} if user else {"active": "false"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/introspect"


class _IntrospectionHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        token = urllib.parse.parse_qs(body).get("token", [""])[0]
        data = json.dumps(self.server.check(token)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep pytest output clean
        pass


class SecDovecot(rig.Dovecot):
    """The rig's Dovecot with one thing changed.

    cert: 'valid' (rig CA), 'self-signed', 'wrong-host' or 'expired' (both from the rig CA);
    ssl: False switches TLS off (no STARTTLS offered); mechanisms: auth_mechanisms;
    oauth2_url: adds an oauth2 passdb asking this introspection URL."""

    def __init__(self, root, name, cert="valid", ssl=True, mechanisms="plain login", oauth2_url=None):
        self._cert, self._ssl, self._mechanisms, self._oauth2_url = cert, ssl, mechanisms, oauth2_url
        super().__init__(root, name, separator="/", prefix="")

    def _make_tls(self) -> None:
        super()._make_tls()
        if self._cert == "valid":
            return
        import trustme

        if self._cert == "self-signed":
            own = trustme.CA()  # a CA certificate is self-signed: serve it as the server certificate
            own.private_key_pem.write_to_path(str(self.key_file))
            own.cert_pem.write_to_path(str(self.cert_file))
            return
        ca = trustme.CA()  # a test CA whose key we keep, replacing the rig's in ca_file
        ca.cert_pem.write_to_path(self.ca_file)
        if self._cert == "wrong-host":
            leaf = ca.issue_cert("mail.wrong.example")
        elif self._cert == "expired":
            now = datetime.now(UTC)
            leaf = ca.issue_cert("localhost", "127.0.0.1", not_before=now - timedelta(days=30),
                                 not_after=now - timedelta(days=1))
        else:
            raise ValueError(self._cert)
        leaf.private_key_pem.write_to_path(str(self.key_file))
        leaf.cert_chain_pems[0].write_to_path(str(self.cert_file))

    def _config(self) -> str:
        conf = super()._config().replace("auth_mechanisms = plain login", f"auth_mechanisms = {self._mechanisms}")
        if not self._ssl:
            conf = conf.replace("ssl = yes\n", "ssl = no\n", 1)
            conf = re.sub(r"  inet_listener imaps \{.*?\n  \}\n", "", conf, count=1, flags=re.S)
        if self._oauth2_url:
            ext = self.dir / "dovecot-oauth2.conf.ext"
            ext.write_text(
                f"introspection_url = {self._oauth2_url}\nintrospection_mode = post\nforce_introspection = yes\n"
                "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
            )
            rig._auth_readable(ext)
            oauth = f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {ext}\n}}\n"
            passwd_file = "passdb {\n  driver = passwd-file\n  args"
            conf = conf.replace(passwd_file, oauth + passwd_file, 1)
        return conf


@pytest.fixture(scope="module")
def instances(rig_root):
    """Factory of SecDovecot instances, started once per module and cleaned up."""
    made: dict[str, SecDovecot] = {}

    def get(name: str, **kw) -> SecDovecot:
        if name not in made:
            made[name] = started(SecDovecot(rig_root, f"sec-{name}", **kw))
        return made[name]

    yield get
    for d in made.values():
        d.cleanup()


@pytest.fixture(scope="module")
def introspection():
    server = Introspection()
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def _seed(account, n=3):
    rig.seed(account, ["INBOX"], [simple_message(i) for i in range(n)])


def _logins(d: rig.Dovecot, user: str) -> list[str]:
    """Dovecot's 'Login:' lines for USER (they say TLS when the session is encrypted)."""
    text = d.log.read_text(errors="replace") if d.log.exists() else ""
    return [line for line in text.splitlines() if "Login: " in line and f"user=<{user}>" in line]


def _error_lines(res) -> list[str]:
    return [line for line in res.err.splitlines() if line.strip()]


def _run(src, dst, tmp_path, *extra, env=None, src_url=None, dst_url=None):
    return migrator("migrate", src_url or src.url, dst_url or dst.url, "--state", str(tmp_path / "state.sqlite"),
                    "--quiet", *extra, src=src, dst=dst, env=env)


# --------------------------------------------------------------------------- TLS
def test_imaps_valid_certificate_accepted_with_ca_file_only(src_account, dst_account, tmp_path):
    _seed(src_account)
    res = _run(src_account, dst_account, tmp_path, src_url=src_account.imaps_url)
    assert res.code == 3, res.text  # the test CA is not in the system store
    assert "certificate" in res.err and "rejected" in res.err and len(_error_lines(res)) == 1

    res = _run(src_account, dst_account, tmp_path, "--ca-file", src_account.ca_file, src_url=src_account.imaps_url,
               dst_url=dst_account.imaps_url)
    assert res.code == 0, res.text
    logins = _logins(src_account.dovecot, src_account.user)[1:]  # [0]: the seed, plain on loopback
    assert logins and all(", TLS," in line for line in logins), logins
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


@pytest.mark.parametrize("kind, reason", [
    ("self-signed", "self-signed certificate"),
    ("wrong-host", "mismatch"),
    ("expired", "certificate has expired"),
])
def test_bad_certificates_rejected_with_one_line_and_exit_3(instances, dst_account, tmp_path, kind, reason):
    d = instances(kind, cert=kind)
    src = d.new_user("src")
    res = _run(src, dst_account, tmp_path, "--ca-file", d.ca_file, src_url=src.imaps_url)
    assert res.code == 3, res.text
    lines = _error_lines(res)
    assert len(lines) == 1 and lines[0].startswith("migrator: error: TLS certificate of 127.0.0.1:"), res.err
    assert reason in lines[0], lines[0]
    assert "Traceback" not in res.text
    assert _logins(d, src.user) == []  # the password was never sent
    assert src.password not in res.text


def test_insecure_accepts_any_certificate_and_warns_on_every_run(instances, dst_account, tmp_path):
    d = instances("self-signed", cert="self-signed")
    src = d.new_user("src")
    _seed(src)
    for run in range(2):
        res = _run(src, dst_account, tmp_path, "--insecure", src_url=src.imaps_url)
        assert res.code == 0, res.text
        assert "warning: --insecure: TLS certificates are NOT verified" in res.err, f"run {run}: {res.err}"
    assert rig.snapshot(dst_account) == rig.snapshot(src)


def test_unreadable_ca_file_is_a_usage_error(src_account, dst_account, tmp_path):
    """Refused before anything connects, TLS or not (plain loopback builds no TLS context)."""
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    for path in (str(bogus), str(tmp_path / "missing.pem")):
        for src_url in (src_account.imaps_url, src_account.url):
            res = _run(src_account, dst_account, tmp_path, "--ca-file", path, src_url=src_url)
            assert res.code == 2, res.text
            assert len(_error_lines(res)) == 1 and "--ca-file" in res.err


# --------------------------------------------------------------------------- STARTTLS
def test_starttls_used_on_imap_to_a_non_loopback_address(src_account, dst_account, tmp_path):
    _seed(src_account)
    res = _run(src_account, dst_account, tmp_path, "--ca-file", src_account.ca_file, "--debug", env=NONLOCAL)
    assert res.code == 0, res.text
    assert re.search(r"> b'\w+ STARTTLS'", res.err)
    # Per connection (tag prefix): the greeting's capabilities decide STARTTLS, and the server is
    # asked again over TLS before the login (RFC 2595: nothing said before TLS is trusted after it).
    by_conn: dict[str, list[str]] = {}
    for prefix, command in re.findall(r"> b'([A-Z]+)\d+ ([A-Z]+)", res.err):
        by_conn.setdefault(prefix, []).append(command)
    assert by_conn and all(cmds[:3] == ["STARTTLS", "CAPABILITY", "AUTHENTICATE"] for cmds in by_conn.values()), by_conn
    for acc, seeded in ((src_account, 1), (dst_account, 0)):
        logins = _logins(acc.dovecot, acc.user)[seeded:]
        assert logins and all(", TLS," in line for line in logins), logins
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def test_loopback_imap_stays_plain_as_documented(src_account, dst_account, tmp_path):
    _seed(src_account, 1)
    res = _run(src_account, dst_account, tmp_path, "--debug")
    assert res.code == 0, res.text
    assert "STARTTLS" not in res.err
    assert not any(", TLS," in line for line in _logins(src_account.dovecot, src_account.user))


def test_login_refused_when_server_offers_no_starttls(instances, dst_account, tmp_path):
    d = instances("nossl", ssl=False)
    src = d.new_user("src")
    _seed(src)
    seeded = _logins(d, src.user)
    ca = ("--ca-file", dst_account.ca_file)  # the destination does STARTTLS
    res = _run(src, dst_account, tmp_path, *ca, env=NONLOCAL)
    assert res.code == 3, res.text
    lines = _error_lines(res)
    assert len(lines) == 1 and "does not offer STARTTLS; refusing to log in without TLS" in lines[0]
    assert _logins(d, src.user) == seeded  # no login was attempted

    res = _run(src, dst_account, tmp_path, *ca, "--allow-plaintext", env=NONLOCAL)
    assert res.code == 0, res.text
    assert f"migrator: warning: logging in to 127.0.0.1:{src.port} without TLS (--allow-plaintext)" in res.err
    assert rig.snapshot(dst_account) == rig.snapshot(src)


def test_pop3_login_refused_without_stls_and_warned_with_allow_plaintext(instances, dst_account, tmp_path):
    """POP3 keeps IMAP's rule and says the same warning when --allow-plaintext lets it log in in clear."""
    d = instances("nossl", ssl=False)
    src = d.new_user("p3src")
    _seed(src)
    seeded = _logins(d, src.user)
    ca = ("--ca-file", dst_account.ca_file)  # the destination does STARTTLS
    res = _run(src, dst_account, tmp_path, *ca, env=NONLOCAL, src_url=src.pop3_url)
    assert res.code == 3, res.text
    lines = _error_lines(res)
    assert len(lines) == 1 and "does not offer STLS; refusing to log in without TLS" in lines[0], lines
    assert _logins(d, src.user) == seeded  # no login was attempted

    res = _run(src, dst_account, tmp_path, *ca, "--allow-plaintext", env=NONLOCAL, src_url=src.pop3_url)
    assert res.code == 0, res.text
    warning = f"migrator: warning: logging in to 127.0.0.1:{src.pop3_port} without TLS (--allow-plaintext)"
    assert warning in res.err and res.err.count("without TLS") == 1, res.err  # once per run
    assert len(rig.fetch_bodies(dst_account, ["INBOX"])) == 3


def test_failed_starttls_never_falls_back_to_plain(src_account, dst_account, tmp_path):
    # STARTTLS is offered but the certificate does not verify (no --ca-file).
    for extra in ((), ("--allow-plaintext",)):
        res = _run(src_account, dst_account, tmp_path, *extra, env=NONLOCAL)
        assert res.code == 3, res.text
        lines = _error_lines(res)
        assert len(lines) == 1 and "STARTTLS with 127.0.0.1:" in lines[0] and "not logging in" in lines[0]
    assert _logins(src_account.dovecot, src_account.user) == []


# --------------------------------------------------------------------------- master user
def test_master_user_migrates_without_the_users_passwords(src_account, dst_account, tmp_path):
    _seed(src_account, 4)
    master = src_account.dovecot.master_password
    env = {"MIGRATOR_SRC_PASSWORD": master, "MIGRATOR_DST_PASSWORD": master}
    res = _run(src_account, dst_account, tmp_path, "--src-auth-user", "admin", "--dst-auth-user", "admin",
               "--debug", env=env)
    assert res.code == 0, res.text
    assert "AUTHENTICATE **REDACTED**" in res.err or "AUTHENTICATE PLAIN" in res.err
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)

    env["MIGRATOR_SRC_PASSWORD"] = "not-the-master-password"
    res = _run(src_account, dst_account, tmp_path, "--src-auth-user", "admin", env=env)
    assert res.code == 3 and "login failed for" in res.err and "as 'admin'" in res.err, res.text


def test_master_user_logs_in_with_login_when_plain_is_not_offered(src_account, dst_account, tmp_path):
    """A server that does not offer AUTH=PLAIN (a proxy takes it out of every capability list;
    Dovecot's LOGIN command itself needs its plain mechanism): the master user logs in with the
    LOGIN command as USER*MASTER (Dovecot's auth_master_user_separator), which only the master's
    password opens here, and the --debug trace masks that line as it does AUTHENTICATE."""
    from tests.faultproxy import FaultProxy

    _seed(src_account, 3)
    master = src_account.dovecot.master_password
    env = {"MIGRATOR_SRC_PASSWORD": master, "MIGRATOR_DST_PASSWORD": master}
    with FaultProxy(src_account.port, rewrite_down=lambda data: data.replace(b" AUTH=PLAIN", b"")) as proxy:
        res = _run(dataclasses.replace(src_account, port=proxy.port), dst_account, tmp_path,
                   "--src-auth-user", "admin", "--dst-auth-user", "admin", "--debug", env=env)
    assert res.code == 0, res.text
    assert "LOGIN **REDACTED**" in res.err, res.err  # imapclient masks the whole LOGIN line
    assert master not in res.text
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


# --------------------------------------------------------------------------- OAuth2
def _token_command(tmp_path: Path, prefix: str) -> tuple[str, Path]:
    """A token command printing PREFIX-N, N counting its runs (in a counter file)."""
    counter = tmp_path / f"{prefix}.count"
    script = tmp_path / f"{prefix}-token.sh"
    script.write_text(f"#!/bin/sh\nn=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 ))\necho $n > {counter}\n"
                      f"echo {prefix}-$n\n")
    script.chmod(0o700)
    return str(script), counter


@pytest.mark.parametrize("mechs, expected", [("plain login xoauth2 oauthbearer", "OAUTHBEARER"),
                                             ("plain login xoauth2", "XOAUTH2")])
def test_oauth2_login_with_a_token_command(instances, introspection, dst_account, tmp_path, mechs, expected):
    d = instances(f"oauth-{expected}", mechanisms=mechs, oauth2_url=introspection.url)
    src = d.new_user("src")
    _seed(src)
    cmd, counter = _token_command(tmp_path, f"tok{expected}")
    for n in range(1, 4):
        introspection.tokens[f"tok{expected}-{n}"] = src.user
    res = migrator("migrate", src.url, dst_account.url, "--state", str(tmp_path / "s.sqlite"), "--quiet",
                   "--debug", "--src-oauth2-token-cmd", cmd, dst=dst_account,
                   env={"MIGRATOR_SRC_PASSWORD": "unused-wrong-password"})
    assert res.code == 0, res.text
    logins = _logins(d, src.user)[1:]  # [0]: the seed
    assert logins and all(f"method={expected}," in line for line in logins), logins
    assert counter.read_text().strip() == "1"  # one token serves every connection while it is valid
    assert rig.snapshot(dst_account) == rig.snapshot(src)
    assert f"tok{expected}-1" not in res.text


def test_expired_token_makes_the_command_run_again_mid_run(instances, introspection, dst_account, tmp_path):
    """Every token expires after one login: the run's later connections are
    rejected with the cached token and must get a fresh one from the command.
    (A run logs in to the source twice here: planning, whose connection a worker
    then keeps, and the second worker.)"""
    d = instances("oauth-OAUTHBEARER", mechanisms="plain login xoauth2 oauthbearer", oauth2_url=introspection.url)
    src = d.new_user("src")
    rig.seed(src, ["INBOX"], [simple_message(i) for i in range(6)])
    rig.seed(src, ["Work"], [simple_message(10 + i) for i in range(6)])
    cmd, counter = _token_command(tmp_path, "exp")
    for n in range(1, 60):
        introspection.tokens[f"exp-{n}"] = src.user
    introspection.max_uses = 1
    try:
        res = migrator("migrate", src.url, dst_account.url, "--state", str(tmp_path / "s.sqlite"), "--quiet",
                       "--workers", "2", "--src-oauth2-token-cmd", cmd, dst=dst_account)
    finally:
        introspection.max_uses = None
    assert res.code == 0, res.text
    assert "login failed" not in res.err  # no connection gave up: each retry had a good token
    runs = int(counter.read_text())
    seen = [(t, ok) for t, ok in introspection.seen if t.startswith("exp-")]
    accepted = {t for t, ok in seen if ok}
    rejected = [t for t, ok in seen if not ok]
    assert runs >= 2 and rejected, seen  # the token did expire mid-run and the command ran again
    assert accepted == {f"exp-{n}" for n in range(1, runs + 1)}, seen  # every fresh token got used
    assert set(rejected) <= accepted  # rejected only after having worked: expired, not bogus
    assert rig.snapshot(dst_account) == rig.snapshot(src)


def test_token_rejected_twice_is_a_clean_exit_3(instances, introspection, dst_account, tmp_path):
    d = instances("oauth-OAUTHBEARER", mechanisms="plain login xoauth2 oauthbearer", oauth2_url=introspection.url)
    src = d.new_user("src")
    cmd, counter = _token_command(tmp_path, "never")  # tokens unknown to the introspection endpoint
    res = migrator("migrate", src.url, dst_account.url, "--state", str(tmp_path / "s.sqlite"), "--quiet",
                   "--src-oauth2-token-cmd", cmd, dst=dst_account)
    assert res.code == 3, res.text
    lines = _error_lines(res)
    assert len(lines) == 1 and "OAUTHBEARER login failed" in lines[0] and "fresh token" in lines[0]
    assert counter.read_text().strip() == "2"
    assert "never-1" not in res.text and "never-2" not in res.text

    failing = tmp_path / "fail.sh"
    failing.write_text("#!/bin/sh\necho oops >&2\nexit 7\n")
    failing.chmod(0o700)
    res = migrator("migrate", src.url, dst_account.url, "--src-oauth2-token-cmd", str(failing), dst=dst_account)
    assert res.code == 3 and "token command failed (exit 7)" in res.err, res.text


# --------------------------------------------------------------------------- secrets
def test_password_file_must_be_private(src_account, dst_account, tmp_path):
    _seed(src_account, 1)
    pw = tmp_path / "src.pw"
    pw.write_text(src_account.password + "\n")
    pw.chmod(0o644)
    env = {"MIGRATOR_SRC_PASSWORD": ""}
    res = migrator("migrate", src_account.url, dst_account.url, "--src-password-file", str(pw), "--quiet",
                   "--state", str(tmp_path / "s.sqlite"), dst=dst_account, env=env)
    assert res.code == 2, res.text
    assert "readable by other users (mode 644)" in res.err and "chmod 600" in res.err
    assert len(_error_lines(res)) == 1

    pw.chmod(0o600)
    res = migrator("migrate", src_account.url, dst_account.url, "--src-password-file", str(pw), "--quiet",
                   "--state", str(tmp_path / "s.sqlite"), dst=dst_account, env=env)
    assert res.code == 0, res.text
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def test_no_password_source_fails_clearly_without_prompting(src_account, dst_account, tmp_path):
    # stdin is /dev/null (not a TTY): no prompt, one line naming the sources.
    res = migrator("migrate", src_account.url, dst_account.url, dst=dst_account,
                   env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    assert res.code == 2, res.text
    assert "no password for" in res.err and "MIGRATOR_SRC_PASSWORD" in res.err and "keyring set migrator" in res.err
    assert "Password for" not in res.text


KEYRING_BACKEND = '''
import json, os
from keyring.backend import KeyringBackend

class FileKeyring(KeyringBackend):
    """Test-only keyring: a JSON file named by MIGRATOR_TEST_KEYRING_FILE."""
    priority = 1

    def _load(self):
        with open(os.environ["MIGRATOR_TEST_KEYRING_FILE"]) as fh:
            return json.load(fh)

    def get_password(self, service, username):
        return self._load().get(service + "|" + username)

    def set_password(self, service, username, password):
        raise NotImplementedError

    def delete_password(self, service, username):
        raise NotImplementedError
'''


def test_password_from_the_keyring(src_account, dst_account, tmp_path):
    pytest.importorskip("keyring")
    _seed(src_account, 2)
    (tmp_path / "testkeyring.py").write_text(KEYRING_BACKEND)
    store = tmp_path / "keyring.json"
    store.write_text(json.dumps({f"migrator|{src_account.user}@127.0.0.1": src_account.password}))
    env = {"PYTHON_KEYRING_BACKEND": "testkeyring.FileKeyring", "MIGRATOR_TEST_KEYRING_FILE": str(store),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(rig.REPO_ROOT)])}
    res = migrator("migrate", src_account.url, dst_account.url, "--state", str(tmp_path / "s.sqlite"), "--quiet",
                   dst=dst_account, env=env)
    assert res.code == 0, res.text
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def _secret_forms(secret: str, users: list[str]) -> list[str]:
    """The secret itself and the base64 forms an AUTHENTICATE PLAIN line would carry."""
    forms = [secret]
    for u in users:
        for authz in ("", u):
            forms.append(base64.b64encode(f"{authz}\0{u}\0{secret}".encode()).decode())
    return forms


def test_no_secret_in_any_output_file_plan_or_process_title(src_account, dst_account, tmp_path):
    rig.seed(src_account, ["INBOX"], [simple_message(i) for i in range(5)])
    rig.seed(src_account, ["Work", "2020"], [simple_message(10 + i) for i in range(3)])
    pw_file = tmp_path / "dst.pw"
    pw_file.write_text(dst_account.password)
    pw_file.chmod(0o600)
    state = tmp_path / "run" / "state.sqlite"
    report = tmp_path / "run" / "report.json"
    args = ["migrate", src_account.url, dst_account.url, "--debug", "--state", str(state), "--report", str(report),
            "--dst-password-file", str(pw_file), "--workers", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(src_account.env("src"))
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"  # files: a --debug trace would fill a pipe
    with open(out_path, "w") as out_fh, open(err_path, "w") as err_fh:
        proc = subprocess.Popen([sys.executable, "-m", "migrator", *args], stdout=out_fh, stderr=err_fh,
                                stdin=subprocess.DEVNULL, env=env)
        titles, wal = [], b""
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # sample title and WAL while it runs
            try:
                titles.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
                wal = Path(f"{state}-wal").read_bytes() or wal  # SQLite removes it at the end
            except OSError:
                pass
            time.sleep(0.02)
        proc.wait(timeout=60)
    out, err = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, out + err
    verify = migrator("verify", src_account.url, dst_account.url, "--debug",
                      "--report", str(tmp_path / "run" / "verify.json"), src=src_account, dst=dst_account)
    assert verify.code == 0, verify.text
    plan = migrator("plan", src_account.url, dst_account.url, "-o", str(tmp_path / "run" / "plan.toml"), "--debug",
                    src=src_account, dst=dst_account)
    assert plan.code == 0, plan.text
    assert stat.S_IMODE((tmp_path / "run" / "plan.toml").stat().st_mode) == 0o600
    assert "LOGIN" in err or "AUTHENTICATE" in err  # the trace did cover the login
    assert titles and wal  # both were really looked at

    texts = {"stdout": out, "stderr": err, "verify stdout": verify.out, "verify stderr": verify.err,
             "plan stdout": plan.out, "plan stderr": plan.err,
             "process titles": "\n".join(titles), "state WAL during the run": wal.decode("latin-1")}
    files = sorted(p for p in (tmp_path / "run").iterdir())
    assert report in files and state in files and tmp_path / "run" / "plan.toml" in files
    for p in files:
        texts[p.name] = p.read_bytes().decode("latin-1")
    users = [src_account.user, dst_account.user]
    for secret in (src_account.password, dst_account.password):
        for form in _secret_forms(secret, users):
            leaks = [name for name, text in texts.items() if form in text]
            assert not leaks, f"secret found in {leaks}"


def test_wrong_password_message_has_no_secret(src_account, dst_account, tmp_path):
    wrong = "Wr0ng-S3cret-Value"
    res = migrator("migrate", src_account.url, dst_account.url, "--debug", dst=dst_account,
                   env={"MIGRATOR_SRC_PASSWORD": wrong})
    assert res.code == 3, res.text
    assert "login failed for" in res.err
    assert wrong not in res.text
    assert all(form not in res.text for form in _secret_forms(wrong, [src_account.user]))


# --------------------------------------------------------------------------- file modes
def test_files_and_directories_migrator_creates_are_private(src_account, dst_account, tmp_path):
    _seed(src_account, 2)
    old = os.umask(0o022)  # a common umask: modes must not depend on it
    try:
        base = tmp_path / "new" / "deeper"
        res = migrator("migrate", src_account.url, dst_account.url, "--state", str(base / "st" / "state.sqlite"),
                       "--report", str(base / "rep" / "report.json"), "--quiet", src=src_account, dst=dst_account,
                       env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
        assert res.code == 0, res.text
        res2 = migrator("migrate", src_account.url, dst_account.url, "--quiet", src=src_account, dst=dst_account,
                        env={"XDG_STATE_HOME": str(tmp_path / "xdg" / "nested")})
        assert res2.code == 0, res2.text
    finally:
        os.umask(old)
    created_dirs = [tmp_path / "new", base, base / "st", base / "rep", tmp_path / "xdg" / "nested",
                    tmp_path / "xdg" / "nested" / "migrator"]
    for d in created_dirs:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = [p for d in (base / "st", base / "rep", tmp_path / "xdg" / "nested" / "migrator") for p in d.iterdir()]
    assert any(p.name == "state.sqlite" for p in files) and any(p.name == "report.json" for p in files)
    assert any(p.name.endswith(".sqlite") for p in (tmp_path / "xdg" / "nested" / "migrator").iterdir())
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


# --------------------------------------------------------------------------- examples
@pytest.mark.parametrize("name", ["oauth2_gmail.py", "oauth2_microsoft365.py"])
def test_oauth2_examples_compile(name, tmp_path):
    path = rig.REPO_ROOT / "examples" / name
    text = path.read_text()
    assert "pip install" in text
    py_compile.compile(str(path), cfile=str(tmp_path / (name + "c")), doraise=True)
