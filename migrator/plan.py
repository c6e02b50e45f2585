"""The plan: which source folder goes where, decided before anything is copied.

A Plan is what `migrator plan` writes for a person to review and what
`migrator run` carries out. It holds where secrets are found, never secrets.
Reading and writing the TOML file is plan_io's job.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from migrator.accounts import Endpoint
from migrator.errors import UsageError
from migrator.filters import Filters
from migrator.naming import Folder, display

PLAN_VERSION = 1
COPY, SKIP = "copy", "skip"
ACTIONS = (COPY, SKIP)


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
    # Copy only the messages no other copied folder shows (Gmail's All Mail -> Archive: the
    # archived mail, which has no label). Needs a source that tells (MessageMeta.also_in).
    leftover: bool = False
    note: str | None = None  # why the rule decided so; written as a comment
    line: int | None = None  # line of its [[folder]] in the plan file, for error messages


@dataclass
class Plan:
    source: Endpoint
    destination: Endpoint
    folders: list[FolderPlan] = field(default_factory=list)
    source_secret: dict[str, str] = field(default_factory=dict)
    destination_secret: dict[str, str] = field(default_factory=dict)
    options: dict[str, object] = field(default_factory=dict)
    filters: Filters = field(default_factory=Filters)  # which messages are copied (migrator/filters.py)
    # What the preflight found (preflight.Finding.as_dict), for a person to review; a run checks again.
    preflight: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION
    path: str | None = None  # where it was read from or written to
    # What the planner listed on the destination, when the plan was made in this process: the
    # run that follows at once creates folders from it instead of listing again. Not in the file.
    destination_listing: list | None = field(default=None, repr=False, compare=False)

    def copying(self) -> list[FolderPlan]:
        return [f for f in self.folders if f.action == COPY]

    def where(self, fp: FolderPlan) -> str:
        """'plans/a.toml:12: ' for a folder read from a file, '' otherwise."""
        if self.path and fp.line:
            return f"{self.path}:{fp.line}: "
        return ""

    def check_collisions(self) -> None:
        """Two copied source folders onto one destination folder: an error, unless all say merge = true."""
        by_dst: dict[Folder, list[FolderPlan]] = defaultdict(list)
        for fp in self.copying():
            by_dst[fp.destination].append(fp)
        for dst, fps in by_dst.items():
            if len(fps) > 1 and not all(f.merge for f in fps):
                names = " and ".join(
                    f"'{display(f.source)}'" + (f" (line {f.line})" if f.line else "") for f in fps
                )
                raise UsageError(
                    f"{self.where(fps[1])}source folders {names} both go to destination folder '{display(dst)}'",
                    hint="change one destination (--map OLD=NEW), or set merge = true on each of them in the plan",
                )
