"""Planner: both folder trees -> a Plan. Read-only on both servers (LIST, LSUB, STATUS).

Which folders are copied (the first that applies decides; skipped folders stay
in the plan with action = "skip", so a person can turn them back on):
  1. exclude      --exclude GLOB matches the folder;
  2. not-selected --include GLOB / --folder NAME were given and none matches
                  (NAME/* selects NAME and everything below it);
  3. preset:NAME  a preset skips it (e.g. Gmail's Starred), unless the user
                  asked for the folder by --include, --folder or --map. A preset's
                  leftover rule (Gmail: All Mail, when the source offers X-GM-EXT-1)
                  copies instead only the messages no other copied folder shows,
                  to the destination's \\Archive folder or "Archive" (leftover = true).
Where each folder goes (the first that applies decides):
  1. rename          --map 'Old=New/Name'; a map also moves Old's subfolders;
  2. special-use     the source marks it \\Sent, \\Drafts ... (RFC 6154) and the
                     destination has its own folder with that attribute;
  3. localized-name  the source marks no folder at all, and the name is in the
                     table of localized names (presets/localized.toml), e.g.
                     "Gesendete Elemente" -> the destination's \\Sent folder;
                     subfolders of a folder moved by 2 or 3 move with it;
  4. preset:NAME     a preset's rename (Gmail: drop the "[Gmail]/" level);
  5. same-name       the same path components.
The destination's own special folders are those it marks with special-use, or,
when it marks none, its existing folders whose names are in the localized table.
Names are components, so separators and namespace prefixes ("INBOX.") are
translated by the stores. A component that holds the destination's separator
("a.b" going to a '.' server) gets naming.SEPARATOR_SUBSTITUTE ('_') instead,
written into the plan, with a warning: it never silently becomes a subfolder.
\\Noselect source folders are not planned: they hold no mail, and creating a
child on the destination creates its parents.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

from migrator.engine.pairs import both_sides
from migrator.errors import FolderError, UsageError
from migrator.naming import INBOX, Folder, display, is_inbox, needs_substitute, parse_display, safe_component
from migrator.plan import COPY, SKIP, FolderPlan, Plan
from migrator.preflight import one_spelling
from migrator.presets import Preset, available, destination_rules, load_preset, localized_names
from migrator.stores import calls
from migrator.stores.base import FolderInfo, Store

SUBSCRIBE_MODES = ("source", "all", "none")


@dataclass
class PlanningOptions:
    maps: list[tuple[Folder, Folder]] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)
    subscribe: str = "source"  # source: as on the source; all; none
    dst_presets: list[str] = field(default_factory=list)  # what the destination refuses (preflight.py)

    def as_dict(self) -> dict[str, object]:
        """What the plan file records under [options]."""
        return {
            "map": [f"{display(a)}={display(b)}" for a, b in self.maps],
            "include": list(self.include),
            "exclude": list(self.exclude),
            "folders": list(self.folders),
            "presets": list(self.presets),
            "subscribe": self.subscribe,
            "dst_presets": list(self.dst_presets),
        }


def parse_map(text: str) -> tuple[Folder, Folder]:
    """'Old Name=New/Name' -> (('Old Name',), ('New', 'Name')). The last '=' splits (names may hold '=')."""
    if "=" not in text:
        raise UsageError(f"--map '{text}': expected OLD=NEW, e.g. --map 'Sent Items=Sent'")
    old, new = text.rsplit("=", 1)
    src, dst = parse_display(old), parse_display(new)
    if not src or not dst:
        raise UsageError(f"--map '{text}': both sides need a folder name")
    return src, dst


def planning_options(maps=(), include=(), exclude=(), folders=(), presets=(), subscribe="source",
                     dst_presets=()) -> PlanningOptions:
    if subscribe not in SUBSCRIBE_MODES:
        raise UsageError(f"--subscribe {subscribe}: expected one of {', '.join(SUBSCRIBE_MODES)}")
    for p in [*presets, *dst_presets]:
        load_preset(p)  # unknown preset: a usage error now, not later
    for p in dst_presets:
        if load_preset(p).destination is None:
            raise UsageError(f"--dst-preset {p}: that preset says nothing of a destination",
                             hint="presets with a [destination] table: " + ", ".join(
                                 n for n in available() if load_preset(n).destination is not None))
    return PlanningOptions([parse_map(m) for m in maps], list(include), list(exclude), list(folders),
                           list(presets), subscribe, list(dst_presets))


# -- pure rules (unit-tested) ------------------------------------------------------------


@dataclass
class FolderChoice:
    """Where one source folder goes, whether it is copied, and by which rule (a plan line to be)."""

    info: FolderInfo
    destination: Folder
    action: str
    rule: str
    special_use: str | None
    subscribed: bool
    note: str | None = None
    leftover: bool = False  # only the messages no other copied folder shows (plan.FolderPlan.leftover)


def localized_use(folder: Folder) -> str | None:
    """Special use a name implies: top-level folders and folders directly under INBOX."""
    if len(folder) == 1 and not is_inbox(folder[0]):
        name = folder[0]
    elif len(folder) == 2 and is_inbox(folder[0]):
        name = folder[1]
    else:
        return None
    return localized_names().get(name.casefold())


def special_folders(folders: list[FolderInfo]) -> dict[str, Folder]:
    """use -> folder: marked by special-use; or, when no folder is marked, found by localized name."""
    out: dict[str, Folder] = {}
    for f in folders:
        if f.special_use:
            out.setdefault(f.special_use, f.name)
    if out:
        return out
    for f in folders:
        use = localized_use(f.name) if f.selectable else None
        if use:
            out.setdefault(use, f.name)
    return out


def _prefix_map(folder: Folder, maps: list[tuple[Folder, Folder]]) -> Folder | None:
    """Longest matching prefix wins; a map onto '' removes the level (not for the prefix folder itself)."""
    best = None
    for old, new in maps:
        if folder[: len(old)] == old and (best is None or len(old) > len(best[0])):
            if not new and len(folder) == len(old):
                continue
            best = (old, new)
    if best is None:
        return None
    return best[1] + folder[len(best[0]) :]


def _glob_any(folder: Folder, globs: list[str]) -> bool:
    name = display(folder)
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _selected_by_folder(folder: Folder, names: list[str]) -> bool:
    for n in names:
        if n.endswith("/*"):
            root = parse_display(n[:-2])
            if folder[: len(root)] == root:
                return True
        elif parse_display(n) == folder:
            return True
    return False


def map_folders(src_folders: list[FolderInfo], dst_folders: list[FolderInfo], dst_separator: str | None,
                opts: PlanningOptions, identities: bool = False) -> tuple[list[FolderChoice], list[str]]:
    """The rules of the module docstring, on names only: no server is touched. identities: the
    source says which folders show each message (Gmail), so a preset's leftover rule can apply."""
    presets: list[Preset] = [load_preset(p) for p in opts.presets]
    # A preset's warnings say what its [destination] table handles: not repeated when it is given as such.
    warnings = [w for p in presets if p.name not in opts.dst_presets for w in p.warnings]
    selectable = [f for f in src_folders if f.selectable]
    src_marks = any(f.special_use for f in src_folders)
    dst_special = special_folders(dst_folders)
    preset_maps = [(r.source, r.destination, p.name) for p in presets for r in p.renames]

    own: dict[Folder, tuple[Folder, str, str | None]] = {}  # special-use / localized choices, for children
    choices = []
    for info in selectable:
        name = info.name
        use = info.special_use if src_marks else localized_use(name)
        by_use_rule = "special-use" if src_marks else "localized-name"
        note = None
        # -- where it goes
        mapped = _prefix_map(name, opts.maps)
        if is_inbox(name[0]) and len(name) == 1 and mapped is None:
            dest, rule = INBOX, "inbox"
        elif mapped is not None:
            dest, rule = mapped, "rename"
        elif use and use in dst_special:
            dest, rule = dst_special[use], by_use_rule
            own[name] = (dest, rule, use)
        else:
            parent = next((name[:i] for i in range(len(name) - 1, 0, -1) if name[:i] in own), None)
            pmapped = _prefix_map(name, [(old, new) for old, new, _ in preset_maps])
            if parent is not None:
                dest, rule = own[parent][0] + name[len(parent) :], own[parent][1]
                note = f"moves with its parent '{display(parent)}'"
            elif pmapped is not None:
                preset = next(p for old, _, p in preset_maps if name[: len(old)] == old)
                dest, rule = pmapped, f"preset:{preset}"
            else:
                dest, rule = name, "same-name"
        if needs_substitute(dest, dst_separator):
            fixed = tuple(safe_component(c, dst_separator) for c in dest)
            warnings.append(
                f"folder '{display(name)}': the destination uses '{dst_separator}' as its separator, "
                f"so it becomes '{display(fixed)}' (not a subfolder)"
            )
            note = f"'{dst_separator}' replaced by '_': it is the destination's separator"
            dest = fixed
        # -- whether it is copied
        action, skipped = COPY, _skipped(info, opts, presets)
        left = _leftover(info, presets, dst_special) if identities and mapped is None else None
        if left is not None:
            dest, rule, note = left
        elif skipped is not None:
            action, (rule, note) = SKIP, skipped
        subscribed = {"source": info.subscribed, "all": True, "none": False}[opts.subscribe]
        choices.append(FolderChoice(info, dest, action, rule, use, subscribed, note, left is not None))
    return choices, warnings


def _leftover(info: FolderInfo, presets: list[Preset],
              dst_special: dict[str, Folder]) -> tuple[Folder, str, str] | None:
    """A preset's leftover rule (Gmail: All Mail -> the destination's \\Archive folder, or
    Archive): (destination, rule, note), or None."""
    for p in presets:
        for r in p.leftovers:
            if r.special_use.lower() == (info.special_use or "").lower():
                return dst_special.get(r.to_special_use, r.destination), f"preset:{p.name}", r.reason
    return None


def _skipped(info: FolderInfo, opts: PlanningOptions, presets: list[Preset]) -> tuple[str, str] | None:
    """Whether a folder is left out of the copy: (rule, note) saying why, or None if it is copied."""
    name = info.name
    if opts.exclude and _glob_any(name, opts.exclude):
        return "exclude", "matches --exclude"
    selected = _glob_any(name, opts.include) or _selected_by_folder(name, opts.folders)
    if (opts.include or opts.folders) and not selected:
        return "not-selected", "not matched by --include / --folder"
    if selected or _prefix_map(name, opts.maps) is not None:  # asked for: no preset skips it
        return None
    for p in presets:
        hit = next((s for s in p.skips if s.matches(name, info.special_use)), None)
        if hit:
            return f"preset:{p.name}", hit.reason
    return None


# -- against the servers ------------------------------------------------------------------


def plan_folders(src: Store, dst: Store, plan: Plan, opts: PlanningOptions | None = None,
                 with_status: bool = True) -> Plan:
    """with_status: ask each source folder's STATUS (and size) for the plan file. `migrate`,
    which runs the plan at once, does not need them: one round trip (or a listing) less per folder."""
    opts = opts or PlanningOptions()
    identities = src.capabilities.identities
    if identities and "gmail" not in opts.presets:  # X-GM-EXT-1: the source is Gmail
        opts = dataclasses.replace(opts, presets=[*opts.presets, "gmail"])
        plan.warnings.append("the source offers Gmail's X-GM-EXT-1: preset gmail applied (labels as folders, "
                             "each message downloaded once, All Mail's unlabelled mail to Archive)")
    src_listed, dst_folders = both_sides(src.list_folders, dst.list_folders)  # in the same round trip
    plan.destination_listing = dst_folders
    choices, warnings = map_folders(src_listed, dst_folders, dst.separator, opts, identities)
    plan.warnings.extend(warnings)
    plan.options = opts.as_dict()
    statuses = calls.statuses(src, [c.info.name for c in choices]) if with_status else {}
    for c in choices:
        messages, size, uidvalidity = _status(src, c.info.name, statuses) if with_status else (None, None, None)
        plan.folders.append(
            FolderPlan(
                source=c.info.name, destination=c.destination, action=c.action, rule=c.rule,
                special_use=c.special_use, messages=messages, size=size, uidvalidity=uidvalidity,
                subscribed=c.subscribed, note=c.note, leftover=c.leftover,
            )
        )
    # A case-insensitive destination (--dst-preset): a name spelt otherwise than an existing folder is that folder.
    plan.warnings.extend(one_spelling(plan, destination_rules(opts.dst_presets), [f.name for f in dst_folders]))
    return plan


def _status(src: Store, folder: Folder, statuses) -> tuple[int | None, int | None, int | None]:
    st = statuses.get(folder)
    if st is None:
        return None, None, None  # listed but not readable: the run reports it
    size = st.size
    if size is None and st.messages:
        # No STATUS=SIZE: sum RFC822.SIZE after EXAMINE (read-only; changes nothing).
        try:
            src.select(folder, readonly=True)
            size = sum(m.size for m in src.list_messages())
        except FolderError:
            pass  # gone since its STATUS: the run reports it
    return st.messages, size, st.uidvalidity


def invalid_destination(folder: Folder, separator: str | None) -> str | None:
    """Why a destination name cannot be created as written on a server with this separator, or None."""
    for c in folder:
        if not c:
            return "it has an empty level ('//' or a trailing '/')"
        if separator and separator in c:
            return (f"'{c}' contains '{separator}', the destination's separator: it would become a subfolder "
                    f"(write it as '{c.replace(separator, '_')}' or as separate levels with '/')")
        if "*" in c or "%" in c:
            return f"'{c}' contains an IMAP wildcard ('*' or '%')"
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in c):
            return f"{c!r} contains a control character"
    return None
