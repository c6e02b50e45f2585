"""Folder names: one server-neutral form, and the translation to each server's own.

Inside migrator a folder is a tuple of path components, decoded from modified
UTF-7: ("INBOX",), ("Archive", "2020"), ("Éléments envoyés",). Each store
translates with its own hierarchy separator and namespace prefix (NAMESPACE,
e.g. Courier/Cyrus style "INBOX."), so a '/' tree and a '.'+"INBOX." tree map
onto each other without string surgery anywhere else.

A component that contains the destination's separator cannot be written as one
folder there ("a.b" on a '.' server would silently become "a" > "b"). It gets
SEPARATOR_SUBSTITUTE in place of the separator, and the planner warns about it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable

Folder = tuple[str, ...]

INBOX: Folder = ("INBOX",)
SEPARATOR_SUBSTITUTE = "_"


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def from_server(name: str, separator: str | None, prefix: str = "") -> Folder:
    """Server name (already decoded from modified UTF-7) -> components."""
    if is_inbox(name):
        return INBOX
    if prefix and name.startswith(prefix) and len(name) > len(prefix):
        name = name[len(prefix) :]
    parts = tuple(name.split(separator)) if separator else (name,)
    if parts and is_inbox(parts[0]):
        parts = ("INBOX",) + parts[1:]
    return parts


def to_server(folder: Folder, separator: str | None, prefix: str = "") -> str:
    """Components -> server name (still to be encoded to modified UTF-7 on the wire)."""
    if folder == INBOX or (len(folder) == 1 and is_inbox(folder[0])):
        return "INBOX"
    parts = [safe_component(p, separator) for p in folder]
    # A flat server (separator NIL) has no hierarchy: the levels are joined by the substitute.
    return prefix + (separator or SEPARATOR_SUBSTITUTE).join(parts)


def safe_component(component: str, separator: str | None) -> str:
    if separator and separator in component:
        return component.replace(separator, SEPARATOR_SUBSTITUTE)
    return component


def needs_substitute(folder: Folder, separator: str | None) -> bool:
    if not separator:
        return False
    return any(separator in p for p in folder)


def display(folder: Folder) -> str:
    """How a folder is shown to people and written to plans: components joined by '/'."""
    return "/".join(folder)


def parse_display(text: str) -> Folder:
    """Inverse of display(); used for --map, --folder and plan files. '//' escapes nothing: keep it simple."""
    text = text.strip().strip("/")
    if not text:
        return ()
    parts = tuple(text.split("/"))
    if is_inbox(parts[0]):
        parts = ("INBOX",) + parts[1:]
    return parts


def parents(folder: Folder) -> Iterable[Folder]:
    """('a','b','c') -> ('a',), ('a','b')"""
    for i in range(1, len(folder)):
        yield folder[:i]


@functools.lru_cache(maxsize=4096)  # called for every row a state file writes; folders are few
def folder_key(folder: Folder) -> str:
    """A folder as the state file and the archive index store it: its components as a JSON list."""
    return json.dumps(list(folder), ensure_ascii=False)


def folder_from_key(key: str) -> Folder:
    """Inverse of folder_key()."""
    return tuple(json.loads(key))
