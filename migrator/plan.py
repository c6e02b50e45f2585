"""The plan: which source folder goes where, decided before anything is copied.

A Plan is what `migrator plan` writes for a person to review and what
`migrator run` carries out. It holds where secrets are found, never secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migrator.accounts import Endpoint
from migrator.naming import Folder

PLAN_VERSION = 1
COPY, SKIP = "copy", "skip"


@dataclass
class FolderPlan:
    source: Folder
    destination: Folder
    action: str = COPY
    rule: str = "same-name"
    special_use: str | None = None
    messages: int | None = None
    size: int | None = None
    uidvalidity: int | None = None
    subscribed: bool = False
    merge: bool = False


@dataclass
class Plan:
    source: Endpoint
    destination: Endpoint
    folders: list[FolderPlan] = field(default_factory=list)
    source_secret: dict[str, str] = field(default_factory=dict)
    destination_secret: dict[str, str] = field(default_factory=dict)
    options: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION
    path: str | None = None  # where it was read from or written to

    def copying(self) -> list[FolderPlan]:
        return [f for f in self.folders if f.action == COPY]
