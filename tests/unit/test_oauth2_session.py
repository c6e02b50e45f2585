"""The built-in sign-in's token session (migrator/oauth2): when it refreshes, what it keeps where.

A fake provider flow and clock; the keyring is the test stand-in (tests/keyring_standin.py)."""

from __future__ import annotations

import pytest

from migrator import secrets
from migrator.errors import ConnectionFailed, UsageError
from migrator.oauth2 import Flow, OAuth2Config, Tokens, TokenSession, parse_oauth2


class FakeFlow(Flow):
    def __init__(self, clock):
        self.clock, self.n, self.calls, self.refuse = clock, 0, [], False

    def _new(self, how: str) -> Tokens:
        self.n += 1
        self.calls.append(how)
        return Tokens(f"at{self.n}", self.clock() + 3600, f"rt{self.n}")

    def sign_in(self, say):
        say("open URL and enter the code 123")
        return self._new("sign_in")

    def refresh(self, refresh_token):
        return None if self.refuse else self._new(f"refresh:{refresh_token}")


@pytest.fixture
def keyring_file(tmp_path, monkeypatch):
    import keyring

    from tests.keyring_standin import FileKeyring

    monkeypatch.setenv("MIGRATOR_TEST_KEYRING", str(tmp_path / "kr.json"))
    old = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    yield tmp_path / "kr.json"
    keyring.set_keyring(old)


def _session():
    now = [1000.0]
    flow = FakeFlow(lambda: now[0])
    said: list[str] = []
    s = TokenSession(OAuth2Config("microsoft", "app"), "ann", flow, said.append, clock=lambda: now[0])
    return s, flow, now, said


def test_refreshed_before_expiry_and_when_a_server_refuses_it(keyring_file):
    s, flow, now, said = _session()
    assert s.token() == "at1" and flow.calls == ["sign_in"] and "code 123" in said[0]
    assert secrets.oauth2_refresh_token("microsoft:app:ann") == "rt1"
    now[0] += 3000  # 600 s left: more than the 300 s margin, the same token serves
    assert s.token() == "at1"
    now[0] += 400  # 200 s left: a connection opened now gets a new one first
    assert s.token() == "at2" and flow.calls[-1] == "refresh:rt1"
    assert secrets.oauth2_refresh_token("microsoft:app:ann") == "rt2"  # rotated in the keyring
    assert s.token(stale="at1") == "at2"  # another connection already got the new one
    assert s.token(stale="at2") == "at3"  # refused early (revoked): refreshed at once
    assert flow.calls.count("sign_in") == 1


def test_a_later_run_starts_from_the_keyring_and_never_asks_mid_run(keyring_file):
    secrets.keep_oauth2_refresh_token("microsoft:app:ann", "rt-old")
    s, flow, now, said = _session()
    assert s.token() == "at1" and flow.calls == ["refresh:rt-old"] and not said
    flow.refuse = True
    with pytest.raises(ConnectionFailed, match="run the same command again|refused to renew"):
        s.token(stale="at1")
    assert flow.calls.count("sign_in") == 0  # no one is asked once the run is under way


def test_without_a_keyring_the_token_lives_in_memory_and_that_is_said(monkeypatch):
    monkeypatch.setattr(secrets, "keep_oauth2_refresh_token", lambda name, token: False)
    monkeypatch.setattr(secrets, "oauth2_refresh_token", lambda name: None)
    s, flow, now, said = _session()
    assert s.token() == "at1"
    assert any("no system keyring" in line and "memory only" in line for line in said)


def test_option_values():
    cfg = parse_oauth2("microsoft:abc:contoso.onmicrosoft.com")
    assert (cfg.client_id, cfg.tenant) == ("abc", "contoso.onmicrosoft.com")
    assert cfg.describe() == {"oauth2": "microsoft:abc:contoso.onmicrosoft.com"}
    assert parse_oauth2("google", client_id="g1").describe() == {"oauth2": "google:g1"}
    with pytest.raises(UsageError, match="client ID"):
        parse_oauth2("google")
    with pytest.raises(UsageError, match="unknown OAuth2 provider"):
        parse_oauth2("yahoo:x")
