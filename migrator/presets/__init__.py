"""Presets and the localized special-folder table, kept as data (TOML files here).

A preset file has `name`, `description`, `warnings`, `[[skip]]` rules (by
`special_use` or by `name`, a glob on the '/'-joined folder name) and
`[[rename]]` rules (`from` prefix -> `to` prefix); every rule has a `reason`.
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
class Preset:
    name: str
    description: str = ""
    warnings: tuple[str, ...] = ()
    skips: tuple[SkipRule, ...] = ()
    renames: tuple[RenameRule, ...] = field(default_factory=tuple)


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
    return Preset(data["name"], data.get("description", ""), tuple(data.get("warnings", [])), skips, renames)


@cache
def localized_names() -> dict[str, str]:
    """casefolded folder name -> special-use attribute, e.g. 'gesendete elemente' -> '\\Sent'."""
    table: dict[str, str] = {}
    for entry in _read("localized")["use"]:
        for n in entry["names"]:
            table.setdefault(n.casefold(), entry["special_use"])
    return table
