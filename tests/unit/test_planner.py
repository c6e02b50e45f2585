"""Planner mapping rules and plan files, table-driven: pure functions, no server."""

from __future__ import annotations

import pytest

from migrator.errors import UsageError
from migrator.naming import parse_display
from migrator.plan import Plan
from migrator.plan_io import read_plan, render_plan
from migrator.planner import invalid_destination, map_folders, parse_map, planning_options, special_folders
from migrator.presets import available, localized_names
from migrator.stores.base import FolderInfo


def info(name: str, use: str | None = None, noselect: bool = False, subscribed: bool = False) -> FolderInfo:
    comps = parse_display(name)
    attrs = frozenset({"\\Noselect"} if noselect else set()) | ({use} if use else set())
    return FolderInfo(comps, name, frozenset(attrs), use, subscribed)


def plan_of(src, dst, sep="/", **opts):
    choices, warnings = map_folders(src, dst, sep, planning_options(**opts))
    return {"/".join(c.info.name): ("/".join(c.destination), c.action, c.rule) for c in choices}, warnings


SLASH_SPECIAL_DST = [info("INBOX"), info("Sent", "\\Sent"), info("Trash", "\\Trash"), info("Junk", "\\Junk")]

CASES = [
    # (id, source folders, destination folders, dst separator, options, {source: (destination, action, rule)})
    ("same-name", [info("INBOX"), info("Work"), info("Work/2020")], [info("INBOX")], "/", {},
     {"INBOX": ("INBOX", "copy", "inbox"), "Work": ("Work", "copy", "same-name"),
      "Work/2020": ("Work/2020", "copy", "same-name")}),
    ("special-use onto the destination's own folder",
     [info("INBOX"), info("Sent Items", "\\Sent"), info("Deleted Items", "\\Trash")], SLASH_SPECIAL_DST, "/", {},
     {"INBOX": ("INBOX", "copy", "inbox"), "Sent Items": ("Sent", "copy", "special-use"),
      "Deleted Items": ("Trash", "copy", "special-use")}),
    ("source marks special-use: localized names are not guessed",
     [info("Sent", "\\Sent"), info("Gesendete Elemente")], SLASH_SPECIAL_DST, "/", {},
     {"Sent": ("Sent", "copy", "special-use"), "Gesendete Elemente": ("Gesendete Elemente", "copy", "same-name")}),
    ("localized names when the source marks none",
     [info("Gesendete Elemente"), info("Éléments supprimés"), info("Спам"), info("INBOX/已发送")],
     [info("INBOX"), info("Sent", "\\Sent"), info("Trash", "\\Trash"), info("Junk", "\\Junk"),
      info("Drafts", "\\Drafts")], "/", {},
     {"Gesendete Elemente": ("Sent", "copy", "localized-name"),
      "Éléments supprimés": ("Trash", "copy", "localized-name"),
      "Спам": ("Junk", "copy", "localized-name"), "INBOX/已发送": ("Sent", "copy", "localized-name")}),
    ("destination without special-use: its localized folder is the target",
     [info("Sent", "\\Sent")], [info("INBOX"), info("INBOX/Sent Messages")], ".", {},
     {"Sent": ("INBOX/Sent Messages", "copy", "special-use")}),
    ("no destination special folder: the name is kept",
     [info("Sent Items")], [info("INBOX")], "/", {}, {"Sent Items": ("Sent Items", "copy", "same-name")}),
    ("subfolders move with their special parent",
     [info("Sent Items", "\\Sent"), info("Sent Items/2019", None)], SLASH_SPECIAL_DST, "/", {},
     {"Sent Items": ("Sent", "copy", "special-use"), "Sent Items/2019": ("Sent/2019", "copy", "special-use")}),
    ("rename beats special-use and moves the subtree",
     [info("Sent Items", "\\Sent"), info("Old"), info("Old/Sub")], SLASH_SPECIAL_DST, "/",
     {"maps": ["Sent Items=Archive/Sent", "Old=New/Place"]},
     {"Sent Items": ("Archive/Sent", "copy", "rename"), "Old": ("New/Place", "copy", "rename"),
      "Old/Sub": ("New/Place/Sub", "copy", "rename")}),
    ("separator substitute on a '.' destination",
     [info("a.b"), info("x/y.z")], [info("INBOX")], ".", {},
     {"a.b": ("a_b", "copy", "same-name"), "x/y.z": ("x/y_z", "copy", "same-name")}),
    ("exclude beats include; include selects",
     [info("INBOX"), info("Work"), info("Work/Old"), info("Private")], [info("INBOX")], "/",
     {"include": ["Work*", "INBOX"], "exclude": ["Work/Old"]},
     {"INBOX": ("INBOX", "copy", "inbox"), "Work": ("Work", "copy", "same-name"),
      "Work/Old": ("Work/Old", "skip", "exclude"), "Private": ("Private", "skip", "not-selected")}),
    ("--folder NAME/* is the subtree with NAME",
     [info("INBOX"), info("Projects"), info("Projects/A"), info("Projectsx")], [info("INBOX")], "/",
     {"folders": ["Projects/*"]},
     {"INBOX": ("INBOX", "skip", "not-selected"), "Projects": ("Projects", "copy", "same-name"),
      "Projects/A": ("Projects/A", "copy", "same-name"), "Projectsx": ("Projectsx", "skip", "not-selected")}),
    ("gmail preset: skip virtual folders, drop [Gmail]/",
     [info("INBOX"), info("[Gmail]", noselect=True), info("[Gmail]/All Mail", "\\All"),
      info("[Gmail]/Starred", "\\Flagged"), info("[Gmail]/Important", "\\Important"),
      info("[Gmail]/Sent Mail", "\\Sent"), info("[Gmail]/Spam", "\\Junk"), info("Label")],
     [info("INBOX"), info("Sent", "\\Sent")], "/", {"presets": ["gmail"]},
     {"INBOX": ("INBOX", "copy", "inbox"), "[Gmail]/All Mail": ("All Mail", "skip", "preset:gmail"),
      "[Gmail]/Starred": ("Starred", "skip", "preset:gmail"),
      "[Gmail]/Important": ("Important", "skip", "preset:gmail"),
      "[Gmail]/Sent Mail": ("Sent", "copy", "special-use"), "[Gmail]/Spam": ("Spam", "copy", "preset:gmail"),
      "Label": ("Label", "copy", "same-name")}),
    ("gmail preset skip is overridden when asked for",
     [info("[Gmail]/All Mail", "\\All")], [info("INBOX")], "/",
     {"presets": ["gmail"], "include": ["[[]Gmail]/All Mail"]},
     {"[Gmail]/All Mail": ("All Mail", "copy", "preset:gmail")}),
    ("office365 preset skips non-mail folders",
     [info("INBOX"), info("Calendar"), info("Calendar/Birthdays"), info("Sync Issues/Conflicts"),
      info("Conversation History"), info("Contacts"), info("Tasks"), info("Projects")],
     [info("INBOX")], "/", {"presets": ["office365"]},
     {"INBOX": ("INBOX", "copy", "inbox"), "Calendar": ("Calendar", "skip", "preset:office365"),
      "Calendar/Birthdays": ("Calendar/Birthdays", "skip", "preset:office365"),
      "Sync Issues/Conflicts": ("Sync Issues/Conflicts", "skip", "preset:office365"),
      "Conversation History": ("Conversation History", "skip", "preset:office365"),
      "Contacts": ("Contacts", "skip", "preset:office365"), "Tasks": ("Tasks", "skip", "preset:office365"),
      "Projects": ("Projects", "copy", "same-name")}),
]


@pytest.mark.parametrize("src, dst, sep, opts, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mapping_rules(src, dst, sep, opts, expected):
    got, _ = plan_of(src, dst, sep, **opts)
    assert got == expected


def test_separator_substitute_warns():
    _, warnings = plan_of([info("a.b")], [info("INBOX")], ".")
    assert any("'a.b'" in w and "a_b" in w for w in warnings)


def test_noselect_folders_are_not_planned():
    got, _ = plan_of([info("Parent", noselect=True), info("Parent/Child")], [info("INBOX")])
    assert list(got) == ["Parent/Child"]


@pytest.mark.parametrize("mode, expected", [("source", [True, False]), ("all", [True, True]), ("none", [False, False])])
def test_subscribe_modes(mode, expected):
    choices, _ = map_folders([info("A", subscribed=True), info("B")], [info("INBOX")], "/",
                               planning_options(subscribe=mode))
    assert [c.subscribed for c in choices] == expected


@pytest.mark.parametrize("text, old, new", [
    ("Old Name=New/Name", ("Old Name",), ("New", "Name")),
    ("a=b=c", ("a=b",), ("c",)),
    ("inbox/x=Y", ("INBOX", "x"), ("Y",)),
])
def test_parse_map(text, old, new):
    assert parse_map(text) == (old, new)


@pytest.mark.parametrize("bad", ["nothing", "=New", "Old=", "Old=/"])
def test_parse_map_rejects(bad):
    with pytest.raises(UsageError):
        parse_map(bad)


@pytest.mark.parametrize("folder, sep, bad", [
    (("a", "b"), ".", False), (("a.b",), ".", True), (("a.b",), "/", False), (("a", ""), "/", True),
    (("x*",), "/", True), (("50%",), "/", True), (("tab\there",), "/", True),
])
def test_invalid_destination(folder, sep, bad):
    assert (invalid_destination(folder, sep) is not None) == bad


def test_localized_table_covers_ten_languages():
    names = localized_names()
    sent = {n for n, use in names.items() if use == "\\Sent"}
    samples = ["sent items", "sent messages", "gesendete elemente", "éléments envoyés", "elementos enviados",
               "posta inviata", "verzonden items", "отправленные", "wysłane", "已发送", "送信済み", "skickat"]
    assert all(s in sent for s in samples)
    assert {"gmail", "office365"} <= set(available())


def test_special_folders_prefers_marked():
    marked = special_folders([info("Sent", "\\Sent"), info("Sent Items")])
    assert marked == {"\\Sent": ("Sent",)}
    assert special_folders([info("Sent Items"), info("Papierkorb")]) == {"\\Sent": ("Sent Items",),
                                                                         "\\Trash": ("Papierkorb",)}


def test_unknown_preset_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        planning_options(presets=["nope"])


# -- plan files --------------------------------------------------------------------------

GOOD = """\
version = 1
[source]
url = "imap://a@127.0.0.1:1143"
password_env = "MIGRATOR_SRC_PASSWORD"
[destination]
url = "imaps://b@mail.example.com"
password_file = "/secret/b"
[options]
presets = ["gmail"]

[[folder]]
source = "Sent Items"
destination = "Sent"
action = "copy"
rule = "special-use"
special_use = "\\\\Sent"
messages = 3
bytes = 300
uidvalidity = 7
subscribed = true
"""


def test_plan_round_trip(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(GOOD)
    plan = read_plan(str(p))
    fp = plan.folders[0]
    got = (fp.source, fp.destination, fp.special_use, fp.messages, fp.size, fp.uidvalidity, fp.subscribed, fp.line)
    assert got == (("Sent Items",), ("Sent",), "\\Sent", 3, 300, 7, True, 11)
    fp.note = 'a "quoted"\\ note'
    plan.warnings.append("something to know")
    text = render_plan(plan, str(p))
    p.write_text(text)
    again = read_plan(str(p))
    assert again.folders[0].destination == ("Sent",) and again.destination_secret == {"password_file": "/secret/b"}
    assert again.options == {"presets": ["gmail"]}
    assert "# WARNING: something to know" in text


@pytest.mark.parametrize("edit, line, message", [
    (lambda t: t.replace("version = 1", "version = 2"), 1, "unknown plan version 2"),
    (lambda t: t.replace('destination = "Sent"', 'destination = "Sent'), 13, "malformed TOML"),
    (lambda t: t.replace("subscribed = true", "subscribed = true\ncolour = 1"), 21, "unknown key 'colour'"),
    (lambda t: t.replace('[options]', '[options]\nworkers = 3'), 9, "unknown key 'workers'"),
    (lambda t: t.replace('action = "copy"', 'action = "move"'), 14, "action must be"),
    (lambda t: t.replace('messages = 3', 'messages = "3"'), 17, "'messages'"),
    (lambda t: t.replace('password_env = "MIGRATOR_SRC_PASSWORD"', 'password = "hunter2"'), 4,
     "unknown key 'password'"),
    (lambda t: t + '\n[[folder]]\nsource = "Sent Items"\ndestination = "X"\n', 22, "listed twice"),
    (lambda t: t.replace('url = "imap://a@127.0.0.1:1143"', 'url = "imap://a:pw@127.0.0.1"'), 3, "password"),
])
def test_bad_plans_name_file_and_line(tmp_path, edit, line, message):
    p = tmp_path / "bad.toml"
    p.write_text(edit(GOOD))
    with pytest.raises(UsageError) as e:
        read_plan(str(p))
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert message in str(e.value)
    assert "hunter2" not in str(e.value) and ":pw@" not in str(e.value)


def test_collision_names_both_unless_merge(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(GOOD + '\n[[folder]]\nsource = "Sent"\ndestination = "Sent"\n')
    plan = read_plan(str(p))
    with pytest.raises(UsageError) as e:
        plan.check_collisions()
    assert "'Sent Items' (line 11)" in str(e.value) and "'Sent' (line 22)" in str(e.value)
    for fp in plan.folders:
        fp.merge = True
    plan.check_collisions()
    assert isinstance(plan, Plan)


def test_example_plans_are_valid_and_commented():
    from pathlib import Path

    plans = sorted((Path(__file__).resolve().parents[2] / "plans").glob("*.toml"))
    assert len(plans) >= 3
    for p in plans:
        plan = read_plan(str(p))
        plan.check_collisions()
        assert plan.folders and p.read_text().startswith("# ")
