"""OAuth2 without a helper script (issue 16): the built-in sign-in against stand-ins.

Neither Microsoft's nor Google's sign-in service can be reached from here: tests/oauth2_standin.py
stands in for both (HTTPS, trustme certificate), and Dovecot's oauth2 passdb asks its
introspection endpoint, so the tokens really log in over XOAUTH2/OAUTHBEARER. The keyring is a
stand-in too (tests/keyring_standin.py): one JSON file kept outside the state directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests import rig
from tests.conftest import started
from tests.e2e.test_security import SecDovecot, _logins
from tests.helpers import simple_message
from tests.keyring_standin import entries
from tests.oauth2_standin import OAuth2StandIn

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def standin():
    s = OAuth2StandIn()
    yield s
    s.close()


@pytest.fixture(scope="module")
def oauth_dovecot(rig_root, standin):
    d = started(SecDovecot(rig_root, "oauth2-builtin", mechanisms="plain login xoauth2 oauthbearer",
                           oauth2_url=standin.introspection_url))
    yield d
    d.cleanup()


def _start(standin, src, dst, tmp_path: Path, *extra: str) -> subprocess.Popen:
    """migrate in a subprocess whose stderr the test reads as a person at the terminal would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(dst.env("dst"))
    ca = standin.write_ca(tmp_path / "standin-ca.pem")
    env.update({"MIGRATOR_TEST_OAUTH2_URL": standin.url, "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca,
                "PYTHON_KEYRING_BACKEND": "tests.keyring_standin.FileKeyring",
                "MIGRATOR_TEST_KEYRING": str(tmp_path / "keyring.json")})
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", "migrate", src.url, dst.url, "--state", str(state / "s.sqlite"),
         "--report", str(state / "report.json"), "--quiet", "--workers", "2", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _until(proc: subprocess.Popen, pattern: str) -> tuple[re.Match | None, list[str]]:
    """Read stderr lines until one matches (the sign-in instructions), or the end."""
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m, seen
    return None, seen


def _finish(proc: subprocess.Popen, seen: list[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + err + out


def _no_secret_in_files(folder: Path, secrets_: list[str]) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for s in secrets_:
                assert s.encode() not in data, f"{s} found in {path}"


def test_microsoft_device_flow_signs_in_keeps_the_refresh_token_in_the_keyring(standin, oauth_dovecot,
                                                                                 dst_account, tmp_path):
    src = oauth_dovecot.new_user("ms")
    rig.seed(src, ["INBOX"], [simple_message(i) for i in range(3)])
    standin.account = src.user
    proc = _start(standin, src, dst_account, tmp_path, "--src-oauth2", "microsoft", "--oauth2-client-id", "app-1")
    m, seen = _until(proc, r"open (\S+) in any browser and enter the code (\d+)")
    assert m is not None, "".join(seen)
    assert m.group(1) == f"{standin.url}/devicelogin"
    assert standin.approve(m.group(2))  # the person signs in with the code printed
    code, text = _finish(proc, seen)
    assert code == 0, text
    logins = _logins(oauth_dovecot, src.user)[1:]  # [0]: the seed
    assert logins and all("method=OAUTHBEARER" in line for line in logins), logins
    assert rig.snapshot(dst_account) == rig.snapshot(src)

    kept = entries(tmp_path / "keyring.json")
    assert kept == {f"migrator-oauth2/microsoft:app-1:{src.user}": standin.issued_refresh[-1]}
    issued = standin.issued_refresh + list(standin.access)
    _no_secret_in_files(tmp_path / "state", issued)  # state and report: none of the tokens
    assert not any(t in text for t in issued)

    # A later run starts from the keyring: no one is asked, the refresh token rotates there.
    rig.seed(src, ["INBOX"], [simple_message(10)])
    grants = len(standin.grants)
    proc = _start(standin, src, dst_account, tmp_path, "--src-oauth2", "microsoft:app-1")
    code, text = _finish(proc, [])
    assert code == 0, text
    assert "enter the code" not in text
    assert standin.grants[grants:] == ["refresh"]
    assert entries(tmp_path / "keyring.json")[f"migrator-oauth2/microsoft:app-1:{src.user}"] == \
        standin.issued_refresh[-1]
    assert rig.snapshot(dst_account) == rig.snapshot(src)
    _no_secret_in_files(tmp_path / "state", standin.issued_refresh + list(standin.access))


def test_google_loopback_flow_and_a_token_refused_at_a_reconnect_is_refreshed(standin, oauth_dovecot,
                                                                               dst_account, tmp_path):
    """Each access token logs in once only (max_uses=1): the run's second connection is refused
    its AUTHENTICATE with the token the first used, and must log in with a refreshed one."""
    src = oauth_dovecot.new_user("gm")
    rig.seed(src, ["INBOX"], [simple_message(i) for i in range(4)])
    rig.seed(src, ["Work"], [simple_message(20 + i) for i in range(4)])
    standin.account = src.user
    secret = tmp_path / "client-secret"
    secret.write_text("not-so-secret\n")
    secret.chmod(0o600)
    standin.max_uses = 1
    try:
        proc = _start(standin, src, dst_account, tmp_path, "--src-oauth2", "google",
                      "--oauth2-client-id", "gapp.apps.example", "--oauth2-client-secret-file", str(secret))
        m, seen = _until(proc, r"open (https://\S+) in a browser on this machine")
        assert m is not None, "".join(seen)
        assert "scope=https%3A%2F%2Fmail.google.com%2F" in m.group(1)
        grants = len(standin.grants)
        ctx = __import__("ssl").create_default_context(cafile=str(tmp_path / "standin-ca.pem"))
        with urllib.request.urlopen(m.group(1), context=ctx, timeout=30) as page:  # the browser
            assert b"Signed in" in page.read()
        code, text = _finish(proc, seen)
    finally:
        standin.max_uses = None
    assert code == 0, text
    assert "login failed" not in text
    assert standin.grants[grants] == "authorization_code"
    assert "refresh" in standin.grants[grants + 1:], standin.grants  # refused at a reconnect: refreshed
    refused = [t for t, ok in standin.seen if not ok and t in standin.access]
    assert refused  # a token really was refused mid-run
    assert rig.snapshot(dst_account) == rig.snapshot(src)
    assert entries(tmp_path / "keyring.json")[f"migrator-oauth2/google:gapp.apps.example:{src.user}"] in \
        standin.issued_refresh
    _no_secret_in_files(tmp_path / "state", standin.issued_refresh + list(standin.access))
