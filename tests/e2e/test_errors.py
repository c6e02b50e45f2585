"""Errors a user will meet: one clear line, the documented exit code, never a traceback."""

from __future__ import annotations

import threading

import pytest

from migrator.accounts import parse_endpoint
from migrator.engine.copy import EngineOptions
from migrator.plan import Plan
from migrator.runner import RunSettings, build_plan, execute
from migrator.secrets import SecretSource
from migrator.stores import Connector
from tests import rig
from tests.helpers import dt, migrate, migrator, simple_message

pytestmark = pytest.mark.e2e


def assert_one_line(res, code: int, fragment: str) -> None:
    assert res.code == code, res.text
    assert "Traceback" not in res.text
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("migrator: error:")
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("not-a-url", "not an account URL"),
        ("imaps://mail.example.com", "no user name"),
        ("ftp://a@mail.example.com", "unknown scheme"),
        ("imaps://a:pw@mail.example.com", "do not put the password in the URL"),
    ],
)
def test_malformed_url(url, fragment, dst_account):
    res = migrator("migrate", url, dst_account.url, dst=dst_account)
    assert_one_line(res, 2, fragment)
    assert ":pw@" not in res.text


def test_unknown_host(dst_account):
    res = migrator("migrate", "imaps://a@no-such-host.invalid", dst_account.url,
                   env={"MIGRATOR_SRC_PASSWORD": "x"}, dst=dst_account, timeout=120)
    assert_one_line(res, 3, "cannot resolve host 'no-such-host.invalid'")


def test_connection_refused(dst_account):
    port = rig.free_port()
    res = migrator("migrate", f"imap://a@127.0.0.1:{port}", dst_account.url, env={"MIGRATOR_SRC_PASSWORD": "x"},
                   dst=dst_account)
    assert_one_line(res, 3, f"connection refused by 127.0.0.1:{port}")


def test_wrong_password(src_account, dst_account):
    res = migrator("migrate", src_account.url, dst_account.url, dst=dst_account,
                   env={"MIGRATOR_SRC_PASSWORD": "wrong-password-123"})
    assert_one_line(res, 3, f"login failed for {src_account.user}@127.0.0.1")
    assert "wrong-password-123" not in res.text


def test_no_password_without_a_terminal(src_account, dst_account):
    res = migrator("migrate", src_account.url, dst_account.url, dst=dst_account)
    assert_one_line(res, 2, "no password for")
    assert "MIGRATOR_SRC_PASSWORD" in res.err


def test_tls_verification_failure(src_account, dst_account):
    """The rig's certificate comes from a private CA: not trusted unless --ca-file names it."""
    res = migrator("migrate", src_account.imaps_url, dst_account.url, src=src_account, dst=dst_account)
    assert_one_line(res, 3, "TLS certificate of 127.0.0.1")
    ok = migrator("migrate", src_account.imaps_url, dst_account.url, "--ca-file", src_account.ca_file,
                  "--state", "/tmp/ignore-" + src_account.user + ".sqlite", src=src_account, dst=dst_account)
    assert ok.code == 0, ok.text


def test_rejected_message_is_reported_and_the_rest_copied(src_account, new_account, tmp_path):
    dst = new_account("slash", quota="1M")
    big = simple_message(1, body="x" * 1_500_000)
    small = [simple_message(i) for i in range(2, 7)]
    rig.seed(src_account, ["INBOX"], [(big, (), dt(1))] + [(m, (), dt(i)) for i, m in enumerate(small)])
    res, report = migrate(src_account, dst, tmp_path)
    assert res.code == 1, res.text
    assert report["totals"]["copied"] == 5
    assert len(report["failures"]) == 1
    failure = report["failures"][0]
    assert failure["folder"] == "INBOX" and "OVERQUOTA" in failure["reason"].upper()
    assert "FAILED INBOX UID" in res.out and "OVERQUOTA" in res.out.upper()  # the summary lists it too


def test_an_append_answered_trycreate_gives_up_the_folder_only_if_it_does_not_exist(dst_account):
    """[TRYCREATE] says the folder does not exist: migrator checks (STATUS) before giving the folder
    up, as GNU imap4d answers so for a message it cannot parse (test_server_imap4d)."""
    from migrator.errors import FolderError
    from migrator.stores.base import AppendItem
    from migrator.stores.imap import Credentials, ImapStore

    store = ImapStore(parse_endpoint(dst_account.url), Credentials(password=lambda: dst_account.password))
    try:
        with pytest.raises(FolderError, match="destination folder 'Nowhere' does not exist: .*TRYCREATE"):
            store.append(("Nowhere",), [AppendItem(simple_message(1), (), "")])
        assert len(store.append(("INBOX",), [AppendItem(simple_message(1), (), "")])) == 1
    finally:
        store.close()
    assert rig.fetch_bodies(dst_account, ["INBOX"]) == [simple_message(1)]


def test_source_folder_vanished_before_run(src_account, dst_account, tmp_path):
    rig.seed(src_account, ["Doomed"], [simple_message(1)])
    rig.seed(src_account, ["Kept"], [simple_message(2)])
    src = Connector(parse_endpoint(src_account.url), SecretSource("src"))
    dst = Connector(parse_endpoint(dst_account.url), SecretSource("dst"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIGRATOR_SRC_PASSWORD", src_account.password)
        mp.setenv("MIGRATOR_DST_PASSWORD", dst_account.password)
        plan = build_plan(Plan(src.endpoint, dst.endpoint), src, dst)
        c = rig.connect(src_account)
        c.delete_folder("Doomed")
        c.logout()
        report = execute(plan, src, dst, RunSettings(EngineOptions(workers=2), state_path=str(tmp_path / "s.sqlite"),
                                                     quiet=True), command="migrate", print_fn=lambda *_: None)
    assert not report["ok"]
    errors = {e["folder"]: e["reason"] for e in report["folder_errors"]}
    assert "Doomed" in errors and "Doomed" in errors["Doomed"]
    assert report["folders"]["Kept"]["copied"] == 1


@pytest.mark.parametrize("folders", [1, 2], ids=["end sent alone", "end sent with the next SELECT"])
def test_an_unexpected_error_at_a_folder_end_is_reported_on_that_folder(src_account, dst_account, tmp_path,
                                                                         folders):
    """A small folder's end (size check, STATUS, watermark) waits on the worker's connection for the
    next folder's SELECT (engine/ending.py). An error there that is not the server's (a bug, the
    state file failing) is reported on that folder as an internal error, the next folder is
    copied, and the run ends: not a lost job and a run waiting forever."""
    from migrator.engine.ending import FolderEnd

    names = ["Box/a", "Box/b"][:folders]
    for i, name in enumerate(names):
        rig.seed(src_account, name.split("/"), [simple_message(10 * i + k) for k in range(3)])
    src = Connector(parse_endpoint(src_account.url), SecretSource("src"))
    dst = Connector(parse_endpoint(dst_account.url), SecretSource("dst"))
    broken = []

    def store_watermark(self, run, conn, d=None):
        broken.append(run.fp.source)
        raise RuntimeError("disk full")

    outcome: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIGRATOR_SRC_PASSWORD", src_account.password)
        mp.setenv("MIGRATOR_DST_PASSWORD", dst_account.password)
        mp.setattr(FolderEnd, "_store_watermark", store_watermark)
        plan = build_plan(Plan(src.endpoint, dst.endpoint), src, dst)
        for fp in plan.folders:
            if fp.source not in [tuple(n.split("/")) for n in names]:
                fp.action = "skip"
        run = threading.Thread(target=lambda: outcome.update(report=execute(
            plan, src, dst, RunSettings(EngineOptions(workers=1), state_path=str(tmp_path / "s.sqlite"), quiet=True),
            command="migrate", print_fn=lambda *_: None)), daemon=True)
        run.start()
        run.join(60)
    assert not run.is_alive(), "the run did not end"
    report = outcome["report"]
    errors = {e["folder"]: e["reason"] for e in report["folder_errors"]}
    assert set(errors) == {"/".join(f) for f in broken} and len(broken) == folders, (errors, broken)
    assert all("internal error: RuntimeError: disk full" in reason for reason in errors.values())
    assert report["totals"]["copied"] == 3 * folders  # the next folder is copied all the same
    want, got = rig.snapshot(src_account), rig.snapshot(dst_account)
    assert all(got[tuple(n.split("/"))] == want[tuple(n.split("/"))] for n in names)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["migrate", "--no-such-option"], "No such option: --no-such-option"),
        (["migrate"], "Missing argument"),
        (["frobnicate"], "No such command"),
        (["migrate", "imap://a@127.0.0.1", "imap://b@127.0.0.1", "--batch-mb", "0.01"], "--batch-mb"),
        (["migrate", "imap://a@127.0.0.1", "imap://b@127.0.0.1", "--workers", "0"], "--workers"),
    ],
)
def test_bad_command_lines(args, fragment):
    res = migrator(*args)
    assert_one_line(res, 2, fragment)


def test_too_big_message_is_rejected_for_good_not_retried(src_account, new_account, tmp_path):
    """Dovecot's per-message size limit answers NO [LIMIT]: a message error, not throttling."""
    dst = new_account("slash", max_mail_size="100k")
    big = simple_message(1, body="y" * 200_000)
    rig.seed(src_account, ["INBOX"], [big] + [simple_message(i) for i in range(2, 5)])
    res, report = migrate(src_account, dst, tmp_path)
    assert res.code == 1, res.text
    assert report["totals"]["copied"] == 3
    assert len(report["failures"]) == 1
    assert report["failures"][0]["reason"].startswith("rejected by the destination: [LIMIT] Mail size is larger")
    assert not report["folder_errors"] and report["elapsed_seconds"] < 30  # not retried with backoff
    again, report2 = migrate(src_account, dst, tmp_path, report="r2.json")
    assert again.code == 1 and report2["totals"]["copied"] == 0
    assert "--retry-failed" in report2["failures"][0]["reason"]
