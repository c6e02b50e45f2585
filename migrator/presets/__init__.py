"""Presets and the localized special-folder table, kept as data (TOML files here).

A preset file has `name`, `description`, `warnings`, `[[skip]]` rules (by
`special_use` or by `name`, a glob on the '/'-joined folder name) and
`[[rename]]` rules (`from` prefix -> `to` prefix), `[[leftover]]` rules (a
folder by `special_use` of which only the messages in no other copied folder
go to the destination's `to_special_use` folder or `to`: Gmail's All Mail,
when the source tells each message's labels); every rule has a `reason`.
Its `[destination]` table says what that server refuses or changes when it is
the destination (`--dst-preset`; the plan's preflight, migrator/preflight.py):
`max_message_size` (its default limit), `max_message_ceiling` (the most it can
be raised to: larger messages are reported, not sent), `max_line_length`,
`case_insensitive` (folder names), `reserved_names`, `forbidden_characters`;
sizes as the --max-size option writes them (K/M/G, 1024-based). What the run itself does about
the server (engine/flagrules.py, engine/jobs.py): `flags_set_after_append` (flags an APPEND loses:
set by STORE after it), `flags_added` (flags the server adds by itself: not a difference),
`session_errors` (the server closes a session after that many NO/BAD answers: any preset may say
so), `max_bytes_per_day` (what the provider lets an account upload a day). At the top level,
`max_bytes_per_day` is what it lets an account download a day, when it is the source (`--preset`).
Adding a preset means adding a file, not code.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from migrator.errors import UsageError
from migrator.naming import Folder, display, parse_display

NOT_PRESETS = {"localized"}


@dataclass(frozen=True)
class SkipRule:
    reason: str
    special_use: str | None = None
    name: str | None = None  # glob on display(folder)

    def matches(self, folder: Folder, special_use: str | None) -> bool:
        if self.special_use and special_use and self.special_use.lower() == special_use.lower():
            return True
        if not self.name:
            return False
        return fnmatch.fnmatchcase(display(folder), self.name)


@dataclass(frozen=True)
class RenameRule:
    source: Folder
    destination: Folder
    reason: str


@dataclass(frozen=True)
class LeftoverRule:
    """A source folder (by special_use) of which only the messages no other copied folder shows are
    copied, to the destination's to_special_use folder, or `destination` (plan: leftover = true)."""
    special_use: str
    to_special_use: str
    destination: Folder
    reason: str


@dataclass(frozen=True)
class DestinationRules:
    """What a destination refuses or changes (a preset's [destination] table, or several combined)."""

    presets: tuple[str, ...] = ()
    max_message_size: int | None = None
    max_message_ceiling: int | None = None
    max_line_length: int | None = None
    case_insensitive: bool = False
    reserved_names: tuple[str, ...] = ()
    forbidden_characters: str = ""
    flags_set_after_append: tuple[str, ...] = ()
    flags_added: tuple[str, ...] = ()
    session_errors: int | None = None
    max_bytes_per_day: int | None = None

    @property
    def name(self) -> str:
        return "+".join(self.presets)

    def __add__(self, other: DestinationRules) -> DestinationRules:
        """Both presets' rules at once: the smaller limits, every name and character."""
        def least(a, b):
            return b if a is None else a if b is None else min(a, b)

        return DestinationRules(
            self.presets + other.presets, least(self.max_message_size, other.max_message_size),
            least(self.max_message_ceiling, other.max_message_ceiling),
            least(self.max_line_length, other.max_line_length), self.case_insensitive or other.case_insensitive,
            self.reserved_names + other.reserved_names,
            "".join(dict.fromkeys(self.forbidden_characters + other.forbidden_characters)),
            self.flags_set_after_append + other.flags_set_after_append, self.flags_added + other.flags_added,
            least(self.session_errors, other.session_errors),
            least(self.max_bytes_per_day, other.max_bytes_per_day))


    def exceeded(self, body: bytes) -> list[str]:
        """Which of these limits a message is over, said for a person (a refusal's reason)."""
        from migrator.filters import size_text

        out = []
        if self.max_message_size and len(body) > self.max_message_size:
            out.append(f"over {self.name}'s default message size limit of {size_text(self.max_message_size)}")
        if self.max_line_length and len(body) > self.max_line_length and longest_line(body) > self.max_line_length:
            out.append(f"a line over {self.name}'s limit of {self.max_line_length} characters")
        return out


def longest_line(body: bytes) -> int:
    """The longest line's length in characters, CRLF not counted (octets: what a server limits)."""
    return max((len(line.rstrip(b"\r")) for line in body.split(b"\n")), default=0)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    warnings: tuple[str, ...] = ()
    skips: tuple[SkipRule, ...] = ()
    renames: tuple[RenameRule, ...] = field(default_factory=tuple)
    destination: DestinationRules | None = None
    leftovers: tuple[LeftoverRule, ...] = ()
    max_bytes_per_day: int | None = None  # as the source: what the provider lets an account download a day


def _read(name: str) -> dict:
    res = resources.files(__package__).joinpath(f"{name}.toml")
    if not res.is_file():
        raise UsageError(f"unknown preset '{name}'", hint="available: " + ", ".join(available()))
    return tomllib.loads(res.read_text(encoding="utf-8"))


def available() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files(__package__).iterdir()
        if p.name.endswith(".toml") and p.name[:-5] not in NOT_PRESETS
    )


@cache
def load_preset(name: str) -> Preset:
    if name in NOT_PRESETS or not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"unknown preset '{name}'", hint="available: " + ", ".join(available()))
    data = _read(name)
    skips = tuple(SkipRule(r["reason"], r.get("special_use"), r.get("name")) for r in data.get("skip", []))
    renames = tuple(
        RenameRule(parse_display(r["from"]), parse_display(r["to"]), r["reason"]) for r in data.get("rename", [])
    )
    leftovers = tuple(LeftoverRule(r["special_use"], r["to_special_use"], parse_display(r["to"]), r["reason"])
                      for r in data.get("leftover", []))
    from migrator.filters import parse_size

    down = data.get("max_bytes_per_day")
    return Preset(data["name"], data.get("description", ""), tuple(data.get("warnings", [])), skips, renames,
                  _destination(data["name"], data.get("destination")), leftovers,
                  parse_size(down, f"preset {name}: max_bytes_per_day") if down else None)


def _destination(name: str, table: dict | None) -> DestinationRules | None:
    from migrator.filters import parse_size

    if table is None:
        return None
    sizes = {k: parse_size(table[k], f"preset {name}: {k}") if k in table else None
             for k in ("max_message_size", "max_message_ceiling", "max_bytes_per_day")}
    return DestinationRules((name,), sizes["max_message_size"], sizes["max_message_ceiling"],
                            table.get("max_line_length"), bool(table.get("case_insensitive")),
                            tuple(table.get("reserved_names", ())), table.get("forbidden_characters", ""),
                            tuple(table.get("flags_set_after_append", ())), tuple(table.get("flags_added", ())),
                            table.get("session_errors"), sizes["max_bytes_per_day"])


def destination_rules(names) -> DestinationRules | None:
    """The [destination] rules of these presets together; None when none has any."""
    found = [r for r in (load_preset(n).destination for n in names) if r is not None]
    if not found:
        return None
    out = found[0]
    for r in found[1:]:
        out = out + r
    return out


@cache
def localized_names() -> dict[str, str]:
    """casefolded folder name -> special-use attribute, e.g. 'gesendete elemente' -> '\\Sent'."""
    table: dict[str, str] = {}
    for entry in _read("localized")["use"]:
        for n in entry["names"]:
            table.setdefault(n.casefold(), entry["special_use"])
    return table
