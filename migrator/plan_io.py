"""Plan files: versioned TOML, read with tomllib, written here (with comments for the person editing).

Every problem with a file is a UsageError naming the file and line: malformed
TOML, an unknown version, an unknown key, a wrong type, a duplicate source.
tomllib keeps no line numbers, so a small scan of the text (_Lines) finds the
line of each table and key; it understands what this module writes and the
usual hand edits (it does not follow multi-line strings, which plans never need).
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from typing import NoReturn

from migrator.accounts import parse_endpoint
from migrator.errors import UsageError
from migrator.filters import Filters
from migrator.fsutil import write_private
from migrator.naming import Folder, display, parse_display
from migrator.plan import ACTIONS, COPY, PLAN_VERSION, FolderPlan, Plan
from migrator.secrets import env_var

TOP_KEYS = {"version", "source", "destination", "options", "filters", "folder", "preflight"}
PREFLIGHT_KEYS = {"rule": str, "folder": str, "detail": str, "uids": list}
SIDE_KEYS = {"url", "password_env", "password_file", "oauth2_token_cmd", "oauth2"}
SECRET_KEYS = ("password_env", "password_file", "oauth2_token_cmd", "oauth2")
OPTION_KEYS = {"map": list, "include": list, "exclude": list, "folders": list, "presets": list, "subscribe": str,
               "dst_presets": list}
FILTER_KEYS = {"since": str, "before": str, "min_size": str, "max_size": str}
FOLDER_KEYS = {
    "source": str, "destination": str, "action": str, "rule": str, "special_use": str, "messages": int,
    "bytes": int, "uidvalidity": int, "subscribed": bool, "merge": bool,
    "leftover": bool,
}

HEADER = """\
# migrator plan: which source folder goes where. Nothing has been copied yet.
#
#   migrator run {path} --dry-run   # show what would be done, change nothing
#   migrator run {path}             # do it (rerun to resume)
#   migrator verify {path}          # compare both sides message by message
#
# How to edit:
# - Each [[folder]] is one source folder. `destination` is where it goes:
#   components joined by '/', whatever separator or "INBOX." prefix the
#   servers use. Change it to rename or move the folder.
# - action = "copy" or "skip". Skipped folders stay listed so you can turn them on.
# - Two folders with the same destination are an error unless each says
#   merge = true (then both are copied into that one folder).
# - leftover = true copies only the messages no other copied folder shows: a Gmail
#   source's All Mail, whose label folders are the other [[folder]]s (one per label:
#   edit their destinations like any folder), goes to Archive with just the mail
#   that has no label. A message under several labels is downloaded once.
# - subscribed = true subscribes the destination folder.
# - rule, special_use, messages, bytes and uidvalidity record what the planner
#   saw; `run` reports a source folder that vanished or whose UIDVALIDITY
#   changed since. Do not add other keys: unknown keys are an error.
# - No password is stored here: [source] and [destination] say where it is found
#   (password_env, password_file, oauth2_token_cmd, or oauth2: the built-in sign-in, PROVIDER:CLIENT_ID).
"""


# -- writing ----------------------------------------------------------------------------------


def _str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to a plan")


def _comment(text: str) -> str:
    return "\n".join("# " + line for line in text.splitlines())


def render_plan(plan: Plan, path: str) -> str:
    lines = [HEADER.format(path=path)]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"# Written by `migrator plan` on {when}.")
    for w in plan.warnings:
        lines.append(_comment(f"WARNING: {w}"))
    lines.append(f"version = {plan.version}\n")
    for table, ep, secret in (("source", plan.source, plan.source_secret),
                              ("destination", plan.destination, plan.destination_secret)):
        lines.append(f"[{table}]")
        lines.append(f"url = {_str(ep.url())}")
        for k in SECRET_KEYS:
            if k in secret:
                lines.append(f"{k} = {_str(secret[k])}")
        lines.append("")
    lines.append("# How this plan was made (a record: edit the [[folder]] entries, not these).")
    lines.append("[options]")
    for k in OPTION_KEYS:
        if k in plan.options:
            lines.append(f"{k} = {_value(plan.options[k])}")
    lines.append("")
    lines.append(_filters_table(plan))
    for fp in plan.folders:
        if fp.note:
            lines.append(_comment(f"{fp.rule}: {fp.note}"))
        lines.append("[[folder]]")
        lines.append(f"source = {_str(display(fp.source))}")
        lines.append(f"destination = {_str(display(fp.destination))}")
        lines.append(f"action = {_str(fp.action)}")
        lines.append(f"rule = {_str(fp.rule)}")
        if fp.special_use:
            lines.append(f"special_use = {_str(fp.special_use)}")
        for key, v in (("messages", fp.messages), ("bytes", fp.size), ("uidvalidity", fp.uidvalidity)):
            if v is not None:
                lines.append(f"{key} = {v}")
        lines.append(f"subscribed = {_value(fp.subscribed)}")
        if fp.merge:
            lines.append("merge = true")
        if fp.leftover:
            lines.append("leftover = true")
        lines.append("")
    lines += _preflight_tables(plan)
    return "\n".join(lines)


def _preflight_tables(plan: Plan) -> list[str]:
    """[[preflight]]: what the destination is going to refuse or change (a record; `run` checks again)."""
    if not plan.preflight:
        return []
    lines = ["# Preflight: what the destination is going to refuse or change, found by `migrator plan`",
             "# (source folder, source UIDs). A record for review: `run` checks again and reports them."]
    for f in plan.preflight:
        lines += ["[[preflight]]"] + [f"{k} = {_value(f[k])}" for k in PREFLIGHT_KEYS if k in f] + [""]
    return lines


def _filters_table(plan: Plan) -> str:
    """[filters]: which messages `run` copies; edited here, honoured by every run of the plan."""
    lines = ["# Which messages are copied (all when empty). since/before: days (YYYY-MM-DD) compared with",
             "# the day written in each INTERNALDATE, as IMAP SEARCH SINCE/BEFORE do (before is exclusive);",
             "# min_size/max_size: RFC822.SIZE, K/M/G 1024-based. Messages left out are reported as skipped",
             "# and copied by a later run without them.",
             "[filters]"]
    lines += [f"{k} = {_str(v)}" for k, v in plan.filters.as_dict().items()]
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, path: str) -> None:
    """Write the plan (atomically); the file holds no secret, but keep it private anyway (0600)."""
    write_private(path, render_plan(plan, path))
    plan.path = path


# -- reading ----------------------------------------------------------------------------------


_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_\-\"' .]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)\s*=")


class _Lines:
    """Line numbers of tables and keys: ('source', None) -> line of [source]; (('folder', 2), 'action') -> line."""

    def __init__(self, text: str):
        self.at: dict[tuple, int] = {}
        ctx: object = None
        folders = -1
        for n, line in enumerate(text.splitlines(), 1):
            m = _HEADER_RE.match(line)
            if m and not _KEY_RE.match(line):
                name = m.group(2).strip().strip("\"'")
                if m.group(1) == "[[":
                    if name == "folder":
                        folders += 1
                        ctx = ("folder", folders)
                    else:
                        ctx = (name, "array")
                else:
                    ctx = name
                self.at.setdefault((ctx, None), n)
                continue
            k = _KEY_RE.match(line)
            if k:
                self.at.setdefault((ctx, k.group(1).strip("\"'")), n)

    def line(self, ctx, key=None) -> int | None:
        return self.at.get((ctx, key)) or self.at.get((ctx, None))


def _fail(path: str, line: int | None, message: str, hint: str | None = None) -> NoReturn:
    where = f"{path}:{line}" if line else path
    raise UsageError(f"{where}: {message}", hint=hint)


def read_plan(path: str) -> Plan:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise UsageError(f"plan file {path} not found", hint="write one with `migrator plan SRC DST -o FILE`") from None
    except OSError as e:
        raise UsageError(f"cannot read plan file {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(path, raw[: e.start].count(b"\n") + 1, "not UTF-8 text")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        _fail(path, int(m.group(1)) if m else None, f"malformed TOML: {msg}")
    lines = _Lines(text)
    return _build(path, data, lines)


def _check_keys(path: str, lines: _Lines, ctx, table: dict, allowed, what: str) -> None:
    for k in table:
        if k not in allowed:
            _fail(path, lines.line(ctx, k), f"unknown key '{k}' in {what}",
                  hint="allowed: " + ", ".join(sorted(allowed)))


def _typed(path: str, lines: _Lines, ctx, table: dict, key: str, kind: type, what: str):
    v = table.get(key)
    if v is None:
        return None
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if ok and kind is int and v < 0:
        ok = False
    if not ok:
        _fail(path, lines.line(ctx, key), f"'{key}' in {what} must be {_kind_name(kind)}, not {v!r}")
    return v


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "a non-negative integer", bool: "true or false", list: "a list"}[kind]


def _build(path: str, data: dict, lines: _Lines) -> Plan:
    version = data.get("version")
    if version is None:
        _fail(path, 1, "no 'version' (expected version = 1 at the top)")
    if isinstance(version, bool) or not isinstance(version, int):
        _fail(path, lines.line(None, "version"), f"'version' must be an integer, not {version!r}")
    if version != PLAN_VERSION:
        _fail(path, lines.line(None, "version"),
              f"unknown plan version {version} (this migrator reads version {PLAN_VERSION})",
              hint="write the plan again with `migrator plan`, or upgrade migrator")
    _check_keys(path, lines, None, data, TOP_KEYS, "the plan")
    sides = {}
    for side in ("source", "destination"):
        table = data.get(side)
        if not isinstance(table, dict):
            _fail(path, lines.line(side), f"missing [{side}] table with url = \"imaps://user@host\"")
        _check_keys(path, lines, side, table, SIDE_KEYS, f"[{side}]")
        url = _typed(path, lines, side, table, "url", str, f"[{side}]")
        if not url:
            _fail(path, lines.line(side), f"[{side}] has no url")
        try:
            ep = parse_endpoint(url)
        except UsageError as e:
            _fail(path, lines.line(side, "url"), str(e), e.hint)
        secret = {k: _typed(path, lines, side, table, k, str, f"[{side}]") for k in SECRET_KEYS if k in table}
        if len(secret) > 1:
            _fail(path, lines.line(side), f"[{side}] names more than one secret source ({', '.join(secret)}); keep one")
        role = "src" if side == "source" else "dst"
        if "password_env" in secret and secret["password_env"] != env_var(role):
            _fail(path, lines.line(side, "password_env"),
                  f"password_env for the {side} must be {env_var(role)}",
                  hint="or use password_file = \"/path/to/file\"")
        sides[side] = (ep, secret)
    options = data.get("options", {})
    if not isinstance(options, dict):
        _fail(path, lines.line(None, "options"), "'options' must be a table")
    _check_keys(path, lines, "options", options, OPTION_KEYS, "[options]")
    for k, kind in OPTION_KEYS.items():
        _typed(path, lines, "options", options, k, kind, "[options]")
    plan = Plan(sides["source"][0], sides["destination"][0], source_secret=sides["source"][1],
                destination_secret=sides["destination"][1], options=dict(options), path=path)
    plan.filters = _filters(path, lines, data.get("filters", {}))
    plan.preflight = _preflight(path, lines, data.get("preflight", []))
    entries = data.get("folder", [])
    if not isinstance(entries, list):
        _fail(path, lines.line(None, "folder"), "'folder' must be [[folder]] tables")
    seen: dict[Folder, int | None] = {}
    for i, entry in enumerate(entries):
        plan.folders.append(_folder(path, lines, i, entry, seen))
    return plan


def _filters(path: str, lines: _Lines, table) -> Filters:
    if not isinstance(table, dict):
        _fail(path, lines.line(None, "filters"), "'filters' must be a table")
    _check_keys(path, lines, "filters", table, FILTER_KEYS, "[filters]")
    for k, kind in FILTER_KEYS.items():
        _typed(path, lines, "filters", table, k, kind, "[filters]")
    try:
        return Filters.from_dict(table)
    except UsageError as e:
        _fail(path, lines.line("filters"), str(e).replace("--", "").replace("-size", "_size"))


def _preflight(path: str, lines: _Lines, entries) -> list[dict]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        _fail(path, lines.line(None, "preflight"), "'preflight' must be [[preflight]] tables")
    for i, entry in enumerate(entries):
        ctx = ("preflight", "array")
        _check_keys(path, lines, ctx, entry, PREFLIGHT_KEYS, f"[[preflight]] number {i + 1}")
        for k, kind in PREFLIGHT_KEYS.items():
            _typed(path, lines, ctx, entry, k, kind, f"[[preflight]] number {i + 1}")
    return list(entries)


def _folder(path: str, lines: _Lines, i: int, entry: dict, seen: dict) -> FolderPlan:
    ctx = ("folder", i)
    where = f"[[folder]] number {i + 1}"
    _check_keys(path, lines, ctx, entry, FOLDER_KEYS, where)
    vals = {k: _typed(path, lines, ctx, entry, k, kind, where) for k, kind in FOLDER_KEYS.items()}
    line = lines.line(ctx)
    if not vals["source"]:
        _fail(path, line, f"{where} has no source")
    source = parse_display(vals["source"])
    if source in seen:
        _fail(path, line, f"source folder '{display(source)}' is listed twice (also at line {seen[source]})")
    seen[source] = line
    action = vals["action"] or COPY
    if action not in ACTIONS:
        _fail(path, lines.line(ctx, "action"), f"action must be \"copy\" or \"skip\", not {action!r}")
    dest_text = vals["destination"] if vals["destination"] is not None else vals["source"]
    destination = parse_display(dest_text)
    if not destination:
        _fail(path, lines.line(ctx, "destination"), f"folder '{display(source)}' has an empty destination")
    return FolderPlan(
        source=source, destination=destination, action=action, rule=vals["rule"] or "edited",
        special_use=vals["special_use"], messages=vals["messages"], size=vals["bytes"],
        uidvalidity=vals["uidvalidity"], subscribed=bool(vals["subscribed"]), merge=bool(vals["merge"]),
        leftover=bool(vals["leftover"]), line=line,
    )


def dest_line(plan: Plan, fp: FolderPlan) -> str:
    """'file:line: ' of a folder's destination key, for errors found once the server is known."""
    if not plan.path or not fp.line:
        return ""
    try:
        with open(plan.path, encoding="utf-8") as fh:
            lines = _Lines(fh.read())
    except OSError:
        return f"{plan.path}:{fp.line}: "
    idx = next((ctx[1] for (ctx, key), n in lines.at.items()
                if key is None and isinstance(ctx, tuple) and ctx[0] == "folder" and n == fp.line), None)
    n = lines.line(("folder", idx), "destination") if idx is not None else fp.line
    return f"{plan.path}:{n or fp.line}: "
