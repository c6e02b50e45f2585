"""plan / run / verify PLAN, end to end against real Dovecot (issue 3: the planner).

The '/' rig instances store mail as Maildir++, which refuses '.' in folder
names, and the '.' instance refuses '/'. To have a source folder "a.b" going to
a '.' server, this module starts a third instance: '/' separator with
`maildir:...:LAYOUT=fs`, which accepts '.' in names (FsDovecot below).
"""

from __future__ import annotations

import json
import tomllib

import pytest

from tests import rig
from tests.helpers import dt, migrate, migrator, simple_message

pytestmark = pytest.mark.e2e


class FsDovecot(rig.Dovecot):
    """'/' separator, Maildir with LAYOUT=fs: folder names may contain '.'."""

    def _config(self) -> str:
        conf = super()._config()
        return conf.replace(f"maildir:{self.mail_dir}/%u", f"maildir:{self.mail_dir}/%u:LAYOUT=fs")


@pytest.fixture(scope="module")
def dovecot_fs(rig_root):
    d = FsDovecot(rig_root, "fslayout", separator="/", prefix="", special_use=False)
    d.start()
    yield d
    d.cleanup()


# -- helpers ------------------------------------------------------------------------------


def fill(account, folders: dict, subscribe=()) -> None:
    n = 0
    for folder, count in folders.items():
        if count:
            rig.seed(account, list(folder), [(simple_message(n + k), ("\\Seen",), dt(n + k)) for k in range(count)])
        else:
            rig.create_folder(account, list(folder))
        n += count
    for folder in subscribe:
        rig.create_folder(account, list(folder), subscribe=True)


VOLATILE = {"\\marked", "\\unmarked"}


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def server_state(account) -> tuple:
    """Everything a run could change: messages, LIST (with attributes), LSUB, STATUS counters.

    \\Marked / \\Unmarked are left out: they are the server's guess of "new mail since
    someone looked" (RFC 3501), and Dovecot flips them when a folder is merely EXAMINEd.
    """
    c = rig.connect(account)
    try:
        listed = sorted((name, tuple(sorted(a for a in map(_str, attrs) if a.lower() not in VOLATILE)))
                        for attrs, _, name in c.list_folders())
        subscribed = sorted(name for _, _, name in c.list_sub_folders())
        status = {}
        for name, attrs in listed:
            if "\\Noselect" not in attrs:
                st = c.folder_status(name, ["MESSAGES", "UIDNEXT", "UIDVALIDITY"])
                status[name] = (st[b"MESSAGES"], st[b"UIDNEXT"], st[b"UIDVALIDITY"])
    finally:
        c.logout()
    return rig.snapshot(account), listed, subscribed, status


def raw_names(account) -> set[str]:
    c = rig.connect(account)
    try:
        return {name for _, _, name in c.list_folders()}
    finally:
        c.logout()


def subscribed_names(account) -> set[str]:
    c = rig.connect(account)
    try:
        return {name for _, _, name in c.list_sub_folders()}
    finally:
        c.logout()


def make_plan(src, dst, path, *extra):
    return migrator("plan", src.url, dst.url, "-o", str(path), *extra, src=src, dst=dst)


def run_plan(src, dst, path, tmp_path, *extra):
    rep = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    res = migrator("run", str(path), "--report", str(rep), "--quiet", *extra, src=src, dst=dst)
    return res, (json.loads(rep.read_text()) if rep.exists() else {})


def entries(path) -> dict:
    data = tomllib.loads(path.read_text())
    return {f["source"]: f for f in data["folder"]}


def edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


# -- tests --------------------------------------------------------------------------------


def test_plan_is_read_only_and_records_folders_counts_and_secret_sources(new_account, tmp_path):
    src, dst = new_account("slash"), new_account("slash")
    fill(src, {("INBOX",): 2, ("Sent",): 3, ("Work", "2020"): 1, ("Empty",): 0}, subscribe=[("Work", "2020")])
    rig.create_folder(dst, ["Sent"])
    before = server_state(src), server_state(dst)
    pw_file = tmp_path / "dst.pw"
    pw_file.write_text(dst.password + "\n")
    pw_file.chmod(0o600)

    path = tmp_path / "plans" / "p.toml"
    res = migrator("plan", src.url, dst.url, "-o", str(path), "--dst-password-file", str(pw_file), src=src)
    assert res.code == 0, res.text

    assert (server_state(src), server_state(dst)) == before
    text = path.read_text()
    assert src.password not in text and dst.password not in text
    data = tomllib.loads(text)
    assert data["version"] == 1
    assert data["source"] == {"url": src.url, "password_env": "MIGRATOR_SRC_PASSWORD"}
    assert data["destination"] == {"url": dst.url, "password_file": str(pw_file)}
    assert text.startswith("# migrator plan") and "How to edit" in text
    got = entries(path)
    snap = rig.snapshot(src)
    for name, folder in (("INBOX", ("INBOX",)), ("Sent", ("Sent",)), ("Work/2020", ("Work", "2020")),
                         ("Empty", ("Empty",))):
        assert got[name]["messages"] == len(snap[folder])
        assert got[name]["bytes"] == sum(len(b) for b in rig.fetch_bodies(src, list(folder)))
        assert got[name]["action"] == "copy" and got[name]["uidvalidity"] > 0
    assert got["Sent"]["special_use"] == "\\Sent" and got["Sent"]["rule"] == "special-use"
    assert got["Work/2020"]["subscribed"] is True and got["Empty"]["subscribed"] is False
    assert set(got) == {"INBOX", "Sent", "Work/2020", "Empty"}  # \Noselect "Work" is not planned

    again = migrator("plan", src.url, dst.url, "-o", str(path), src=src, dst=dst)
    assert again.code == 2 and "exists" in again.err and "--force" in again.err


def test_dot_source_without_special_use_maps_localized_names_and_back(new_account, tmp_path):
    """'.'+INBOX. (no SPECIAL-USE) -> '/' with special-use; then '/' (SPECIAL-USE) -> '.' with a localized Sent."""
    dot, slash = new_account("dot"), new_account("slash")
    fill(dot, {("INBOX",): 2, ("Sent Items",): 3, ("Papierkorb",): 1, ("Archive", "2020", "Q1"): 2, ("Notes",): 1},
         subscribe=[("Sent Items",), ("Notes",)])
    for name in ("Sent", "Trash"):
        rig.create_folder(slash, [name])
    before = rig.snapshot(dot)

    path = tmp_path / "dot-to-slash.toml"
    res = make_plan(dot, slash, path)
    assert res.code == 0, res.text
    got = entries(path)
    assert (got["Sent Items"]["destination"], got["Sent Items"]["rule"]) == ("Sent", "localized-name")
    assert (got["Papierkorb"]["destination"], got["Papierkorb"]["rule"]) == ("Trash", "localized-name")
    assert got["Archive/2020/Q1"]["destination"] == "Archive/2020/Q1"

    res, report = run_plan(dot, slash, path, tmp_path)
    assert res.code == 0, res.text
    after = rig.snapshot(slash)
    assert after[("Sent",)] == before[("Sent Items",)]
    assert after[("Trash",)] == before[("Papierkorb",)]
    assert after[("Archive", "2020", "Q1")] == before[("Archive", "2020", "Q1")]
    assert after[("INBOX",)] == before[("INBOX",)]
    assert ("Sent Items",) not in after and "Archive/2020/Q1" in raw_names(slash)
    # Subscriptions follow the folders, also onto a destination folder that already existed.
    assert {"Sent", "Notes"} <= subscribed_names(slash)
    assert report["totals"]["copied"] == sum(len(v) for v in before.values())

    # Back: the '/' source marks \Sent; the '.' destination marks nothing but has "INBOX.Sent Messages".
    dot_back = new_account("dot")
    rig.create_folder(dot_back, ["Sent Messages"])
    path2 = tmp_path / "slash-to-dot.toml"
    assert make_plan(slash, dot_back, path2).code == 0
    got = entries(path2)
    assert (got["Sent"]["destination"], got["Sent"]["rule"]) == ("Sent Messages", "special-use")
    res, _ = run_plan(slash, dot_back, path2, tmp_path)
    assert res.code == 0, res.text
    back = rig.snapshot(dot_back)
    assert back[("Sent Messages",)] == before[("Sent Items",)]
    assert back[("Archive", "2020", "Q1")] == before[("Archive", "2020", "Q1")]
    assert "INBOX.Archive.2020.Q1" in raw_names(dot_back)
    assert res.code == 0 and migrator("verify", str(path2), src=slash, dst=dot_back).code == 0


def test_name_with_the_destination_separator_gets_a_substitute(dovecot_fs, new_account, tmp_path):
    src, dst = dovecot_fs.new_user("fs"), new_account("dot")
    fill(src, {("a.b",): 2, ("x", "y.z"): 1, ("a",): 1})
    before = rig.snapshot(src)
    path = tmp_path / "sub.toml"
    res = make_plan(src, dst, path)
    assert res.code == 0, res.text
    assert "'a.b'" in res.err and "a_b" in res.err  # the warning
    got = entries(path)
    assert got["a.b"]["destination"] == "a_b" and got["x/y.z"]["destination"] == "x/y_z"
    res, report = run_plan(src, dst, path, tmp_path)
    assert res.code == 0, res.text
    names = raw_names(dst)
    assert {"INBOX.a_b", "INBOX.x.y_z", "INBOX.a"} <= names and "INBOX.a.b" not in names
    after = rig.snapshot(dst)
    assert after[("a_b",)] == before[("a.b",)] and after[("a",)] == before[("a",)]

    # An edited destination that the '.' server cannot hold as one folder: refused with file and line.
    edit(path, 'destination = "a_b"', 'destination = "a.c"')
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t == 'destination = "a.c"')
    res, _ = run_plan(src, dst, path, tmp_path)
    assert res.code == 2 and f"{path}:{line}:" in res.err and "separator" in res.err, res.text
    assert "Traceback" not in res.text


def test_migrate_with_renames_include_exclude_and_subscribe_none(new_account, tmp_path):
    src, dst = new_account("slash"), new_account("slash")
    fill(src, {("INBOX",): 1, ("Old",): 2, ("Old", "Sub"): 1, ("Keep",): 1, ("Keep", "Junkish"): 1, ("Other",): 1},
         subscribe=[("Old",)])
    before = rig.snapshot(src)
    res, report = migrate(src, dst, tmp_path, "--map", "Old=New/Place", "--include", "Old*", "--include", "Keep*",
                          "--exclude", "*Junkish", "--subscribe", "none")
    assert res.code == 0, res.text
    after = rig.snapshot(dst)
    assert after[("New", "Place")] == before[("Old",)]
    assert after[("New", "Place", "Sub")] == before[("Old", "Sub")]
    assert after[("Keep",)] == before[("Keep",)]
    assert ("Keep", "Junkish") not in after and ("Other",) not in after and ("Old",) not in after
    assert after.get(("INBOX",), []) == []  # not selected
    assert subscribed_names(dst) == set()
    # verify with the same mapping options compares the mapped folders
    v = migrator("verify", src.url, dst.url, "--map", "Old=New/Place", "--include", "Old*", "--include", "Keep*",
                 "--exclude", "*Junkish", src=src, dst=dst)
    assert v.code == 0, v.text


def test_collision_is_an_error_naming_both_unless_merge(new_account, tmp_path):
    dot, slash = new_account("dot"), new_account("slash")
    fill(dot, {("Sent",): 2, ("Sent Items",): 3})
    rig.create_folder(slash, ["Sent"])
    before = rig.snapshot(dot)
    state_before = server_state(slash)

    res, _ = migrate(dot, slash, tmp_path)
    assert res.code == 2 and "'Sent'" in res.err and "'Sent Items'" in res.err and "merge = true" in res.err
    assert server_state(slash) == state_before

    path = tmp_path / "c.toml"
    res = make_plan(dot, slash, path)
    assert res.code == 2 and "'Sent Items'" in res.err and path.exists()
    res, _ = run_plan(dot, slash, path, tmp_path)
    assert res.code == 2 and f"{path}:" in res.err and "(line " in res.err, res.text
    text = path.read_text().replace('rule = "localized-name"', 'rule = "localized-name"\nmerge = true')
    path.write_text(text)
    res, report = run_plan(dot, slash, path, tmp_path)
    assert res.code == 0, res.text
    merged = rig.snapshot(slash)[("Sent",)]
    assert sorted(merged) == sorted(before[("Sent",)] + before[("Sent Items",)])
    res, _ = run_plan(dot, slash, path, tmp_path, "--delete-extra")
    assert res.code == 2 and "merge" in res.err


def test_dry_run_changes_nothing_on_either_server(new_account, tmp_path):
    dot, slash = new_account("dot"), new_account("slash")
    fill(dot, {("INBOX",): 2, ("Sent Items",): 2, ("Projects", "A"): 3}, subscribe=[("Projects", "A")])
    rig.create_folder(slash, ["Sent"])
    rig.seed(slash, ["INBOX"], [(simple_message(100), (), dt(1))])
    path = tmp_path / "dry.toml"
    assert make_plan(dot, slash, path).code == 0
    before = server_state(dot), server_state(slash)

    res = migrator("run", str(path), "--dry-run", src=dot, dst=slash)
    assert res.code == 0, res.text
    assert (server_state(dot), server_state(slash)) == before
    assert not (tmp_path / "dry.state.sqlite").exists()
    assert "Dry run: nothing was changed." in res.out
    assert "Folders that would be created: Projects/A" in res.out
    assert "Projects/A: 3 messages" in res.out and "Sent Items: 2 messages" in res.out
    assert "Would copy 7 messages" in res.out

    res = migrator("migrate", dot.url, slash.url, "--dry-run", "--state", str(tmp_path / "m.sqlite"),
                   src=dot, dst=slash)
    assert res.code == 0, res.text
    assert (server_state(dot), server_state(slash)) == before


def test_plan_edit_run_gives_the_edited_result(new_account, tmp_path):
    src, dst = new_account("slash"), new_account("slash")
    fill(src, {("INBOX",): 1, ("Clients",): 2, ("Clients", "Acme"): 1, ("Spam Stuff",): 2})
    before = rig.snapshot(src)
    path = tmp_path / "e.toml"
    assert make_plan(src, dst, path).code == 0
    edit(path, 'destination = "Clients/Acme"', 'destination = "Customers/ACME Corp"')
    text = path.read_text()
    start = text.index('source = "Spam Stuff"')
    path.write_text(text[:start] + text[start:].replace('action = "copy"', 'action = "skip"', 1))

    res, report = run_plan(src, dst, path, tmp_path)
    assert res.code == 0, res.text
    after = rig.snapshot(dst)
    assert after[("Customers", "ACME Corp")] == before[("Clients", "Acme")]
    assert after[("Clients",)] == before[("Clients",)]
    assert ("Spam Stuff",) not in after and ("Clients", "Acme") not in after
    assert (tmp_path / "e.state.sqlite").exists()  # state beside the plan
    v = migrator("verify", str(path), src=src, dst=dst)
    assert v.code == 0, v.text
    # a rerun copies nothing more
    res, report = run_plan(src, dst, path, tmp_path)
    assert res.code == 0 and report["totals"]["copied"] == 0


def test_bad_plans_give_file_and_line(new_account, tmp_path):
    src, dst = new_account("slash"), new_account("slash")
    fill(src, {("INBOX",): 1, ("A",): 1})
    path = tmp_path / "b.toml"
    assert make_plan(src, dst, path).code == 0
    good = path.read_text()
    version_line = next(i for i, t in enumerate(good.splitlines(), 1) if t.startswith("version"))
    cases = [
        (good.replace("version = 1", "version = 9"), version_line, "unknown plan version 9"),
        (good.replace("version = 1", "version = 1\nversion = 1"), version_line + 1, "malformed TOML"),
        (good.replace('rule = "inbox"', 'rule = "inbox"\nwhatever = 1', 1), None, "unknown key 'whatever'"),
    ]
    for text, line, message in cases:
        path.write_text(text)
        res = migrator("run", str(path), src=src, dst=dst)
        assert res.code == 2 and message in res.err and "Traceback" not in res.text, res.text
        if line is None:
            line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("whatever"))
        assert res.err.startswith(f"migrator: error: {path}:{line}: "), res.err
    res = migrator("run", str(tmp_path / "missing.toml"), src=src, dst=dst)
    assert res.code == 2 and "not found" in res.err


def test_vanished_folder_and_new_uidvalidity_are_reported_at_run_time(new_account, tmp_path):
    src, dst = new_account("slash"), new_account("slash")
    fill(src, {("INBOX",): 1, ("Gone",): 2, ("Reset",): 2})
    path = tmp_path / "v.toml"
    assert make_plan(src, dst, path).code == 0
    c = rig.connect(src)
    try:
        c.delete_folder("Gone")
        c.delete_folder("Reset")
    finally:
        c.logout()
    rig.seed(src, ["Reset"], [(simple_message(50), (), dt(5))])  # same name, new UIDVALIDITY

    res, report = run_plan(src, dst, path, tmp_path)
    assert res.code == 1, res.text
    errors = {e["folder"]: e["reason"] for e in report["folder_errors"]}
    assert "no longer exists" in errors["Gone"] and f"{path}:" in errors["Gone"]
    assert any("'Reset'" in w and "UIDVALIDITY" in w for w in report["warnings"])
    after = rig.snapshot(dst)
    assert ("Gone",) not in after and len(after[("Reset",)]) == 1
