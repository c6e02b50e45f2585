"""Preflight: before anything is copied, what the destination is going to refuse or change.

Run by `plan` (written into the plan file as [[preflight]] tables and printed) and by a dry run
(`migrate --dry-run`, `run --dry-run`: printed and in the JSON report). Nothing here writes
anywhere: the source is EXAMINEd and listed, the destination asked Store.limits (CAPABILITY,
STATUS, an EXAMINE of INBOX, GETQUOTAROOT).

What it costs: one listing of every copied folder (UID, RFC822.SIZE, FLAGS, INTERNALDATE: what a
run lists anyway), no message body, except for the line-length rule, which reads every body of the
window and is run only when a destination preset has a line limit (--dst-preset office365).

The rules, each finding naming the folder and the source UIDs (Finding.rule):
  too-big          over the destination's APPENDLIMIT (RFC 7889) or a preset's ceiling: the run
                   reports these messages as failed without sending them (over a folder's own
                   STATUS APPENDLIMIT: the run sends them and reports the refusal);
  over-preset-limit  over a preset's default limit (office365: 35 MB): the run sends them and
                   reports the destination's refusal, unless its admin raised the limit;
  long-lines       lines over a preset's limit (office365: 10,500 characters);
  reserved-name, case-clash, forbidden-character   destination folder names it cannot hold (a
                   preset's reserved names and characters; names equal but for case on a
                   case-insensitive destination): the run refuses these folders (folder errors);
  keywords-dropped keywords the destination's PERMANENTFLAGS (without '\\*') do not keep;
  over-quota       the messages to copy against the free STORAGE of its quota (RFC 9208), and
                   any one message larger than that free space.
Messages the plan's filters leave out are not looked at.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from migrator.filters import size_text
from migrator.naming import Folder, display
from migrator.plan import FolderPlan, Plan
from migrator.presets import DestinationRules, longest_line
from migrator.stores import calls
from migrator.stores.base import Limits, MessageMeta, Store

__all__ = ["Finding", "longest_line", "one_spelling", "preflight", "render"]

SYSTEM_FLAGS = frozenset({"\\answered", "\\flagged", "\\deleted", "\\seen", "\\draft"})
LINE_BATCH = 200  # bodies read at a time for the line-length rule


@dataclass(frozen=True)
class Finding:
    rule: str
    folder: str  # the source folder, as the plan writes it
    detail: str
    uids: tuple[int, ...] = ()

    def line(self) -> str:
        uids = f" (UID {_uid_list(self.uids)})" if self.uids else ""
        return f"{self.rule}: {self.folder}: {self.detail}{uids}"

    def as_dict(self) -> dict:
        return {"rule": self.rule, "folder": self.folder, "detail": self.detail, "uids": list(self.uids)}


def _uid_list(uids: tuple[int, ...], most: int = 20) -> str:
    shown = ", ".join(map(str, uids[:most]))
    return shown + (f" and {len(uids) - most} more" if len(uids) > most else "")


# -- folder names (pure) ----------------------------------------------------------------------


def folder_refusals(plan: Plan, rules: DestinationRules | None) -> list[tuple[FolderPlan, str, str]]:
    """(folder, rule, why) for each copied folder whose destination name the destination cannot
    hold. Of folders whose names differ only in case, the first in plan order keeps its name."""
    if rules is None:
        return []
    out = []
    reserved = {n.casefold() for n in rules.reserved_names}
    first_by_fold: dict[tuple[str, ...], FolderPlan] = {}
    for fp in plan.copying():
        name = fp.destination
        bad = sorted({ch for ch in "".join(name) if ch in rules.forbidden_characters})
        if name and name[0].casefold() in reserved:
            out.append((fp, "reserved-name", f"'{display(name)}' is one of {rules.name}'s own folders, not a mail "
                                             "folder"))
        elif bad:
            out.append((fp, "forbidden-character", f"{rules.name} does not allow {' '.join(map(repr, bad))} "
                                                   f"in folder names ('{display(name)}')"))
        elif rules.case_insensitive:
            fold = tuple(c.casefold() for c in name)
            other = first_by_fold.setdefault(fold, fp)
            if other is not fp and other.destination != name and not (fp.merge and other.merge):
                out.append((fp, "case-clash", f"destination '{display(name)}' and '{display(other.destination)}' "
                                              f"(from '{display(other.source)}') are one folder on {rules.name}, "
                                              "whose folder names are case-insensitive"))
    return out


def one_spelling(plan: Plan, rules: DestinationRules | None, existing: Iterable[Folder] = ()) -> list[str]:
    """On a destination whose folder names are case-insensitive, names equal but for case are one
    folder. A copied folder whose destination is spelt otherwise than an existing destination
    folder (alone in the plan with that name) goes into that folder as spelt there, not into a new
    one; folders merged into one (merge = true on each) all take the first one's spelling, so the
    run merges them as one (one after the other). Each change is said (a warning), never silent.
    Pure; the case clashes folder_refusals refuses are left to it."""
    if rules is None or not rules.case_insensitive:
        return []

    def fold(name: Folder) -> tuple[str, ...]:
        return tuple(c.casefold() for c in name)

    copying = plan.copying()
    count = Counter(fold(fp.destination) for fp in copying)
    spelt: dict[tuple[str, ...], Folder] = {}
    for name in existing:
        spelt.setdefault(fold(name), name)
    out = []
    for fp in copying:
        key = fold(fp.destination)
        if count[key] > 1 and not fp.merge:
            continue  # a case clash: folder_refusals' business
        other = spelt.setdefault(key, fp.destination)
        if other != fp.destination:
            out.append(f"'{display(fp.source)}' goes into the destination's '{display(other)}', not "
                       f"'{display(fp.destination)}': {rules.name}'s folder names are case-insensitive")
            fp.destination = other
    return out


# -- messages (pure) ----------------------------------------------------------------------------


def message_findings(fp: FolderPlan, metas: list[MessageMeta], limits: Limits,
                     rules: DestinationRules | None) -> list[Finding]:
    """The size and keyword rules for one folder's messages (those inside the plan's filters)."""
    folder, out = display(fp.source), []
    hard = [n for n in (limits.folder_append_limits.get(fp.destination, limits.append_limit),
                        rules.max_message_ceiling if rules else None) if n]
    limit = min(hard) if hard else None
    if limit is not None:
        over = tuple(m.uid for m in metas if m.size > limit)
        if over:
            out.append(Finding("too-big", folder, f"{len(over)} message(s) over the {size_text(limit)} "
                                                  f"({limit} bytes) the destination accepts: not sent", over))
    soft = rules.max_message_size if rules else None
    if rules is not None and soft is not None and (limit is None or soft < limit):
        over = tuple(m.uid for m in metas if soft < m.size <= (limit or m.size))
        if over:
            out.append(Finding("over-preset-limit", folder,
                               f"{len(over)} message(s) over {rules.name}'s default limit of {size_text(soft)}: "
                               f"refused unless its admin raised the limit", over))
    if limits.permanent_flags is not None and "\\*" not in limits.permanent_flags:
        kept = {f.casefold() for f in limits.permanent_flags}
        dropped: dict[str, list[int]] = defaultdict(list)
        for m in metas:
            for f in m.flags:
                if f.casefold() not in SYSTEM_FLAGS and f.casefold() not in kept:
                    dropped[f].append(m.uid)
        if dropped:
            uids = tuple(sorted({u for us in dropped.values() for u in us}))
            out.append(Finding("keywords-dropped", folder, f"the destination keeps no keyword but "
                               f"{' '.join(limits.permanent_flags) or 'none'} (PERMANENTFLAGS without \\*): "
                               f"{', '.join(sorted(dropped))} would be lost", uids))
    return out


def quota_findings(to_copy: dict[str, list[MessageMeta]], quota: tuple[int, int] | None) -> list[Finding]:
    """The window's bytes against the destination's free STORAGE (an upper bound: messages already
    on the destination are counted too, as the preflight does not read the journal)."""
    if quota is None:
        return []
    used, allowed = quota
    free = max(allowed - used, 0)
    total = sum(m.size for ms in to_copy.values() for m in ms)
    out = []
    for folder, metas in to_copy.items():
        over = tuple(m.uid for m in metas if m.size > free)
        if over:
            out.append(Finding("over-quota", folder, f"{len(over)} message(s) larger than the destination's free "
                                                     f"quota ({free} bytes of {allowed})", over))
    if total > free:
        out.append(Finding("over-quota", "*", f"{total} bytes to copy, {free} free in the destination's quota "
                                              f"({used} of {allowed} bytes used): the copy will stop at [OVERQUOTA]"))
    return out


# -- against the stores -----------------------------------------------------------------------


def preflight(src: Store, dst: Store, plan: Plan, rules: DestinationRules | None) -> list[Finding]:
    """Every rule above, for the plan's copied folders. Read-only on both sides."""
    refused = folder_refusals(plan, rules)
    findings = [Finding(rule, display(fp.source), why) for fp, rule, why in refused]
    skip = {fp.source for fp, _rule, _why in refused}
    existing = {f.name for f in dst.list_folders()}
    limits = dst.limits([fp.destination for fp in plan.copying() if fp.destination in existing])
    windows: dict[str, list[MessageMeta]] = {}
    for fp in plan.copying():
        if fp.source in skip:
            continue
        _st, metas = calls.select_and_list(src, fp.source, readonly=True)
        metas = [m for m in metas if not m.deleted and not (plan.filters and plan.filters.reason(m))]
        windows[display(fp.source)] = metas
        findings += message_findings(fp, metas, limits, rules)
        if rules is not None and rules.max_line_length and metas:
            findings += _long_lines(src, fp.source, metas, rules)
    return findings + quota_findings(windows, limits.quota)


def _long_lines(src: Store, folder: Folder, metas: list[MessageMeta], rules: DestinationRules) -> list[Finding]:
    """The line rule reads the bodies (the folder is selected read-only by the listing just made)."""
    limit = rules.max_line_length or 0
    over: list[int] = []
    for i in range(0, len(metas), LINE_BATCH):
        over += [m.meta.uid for m in src.fetch([x.uid for x in metas[i:i + LINE_BATCH]])
                 if m.meta.size > limit and longest_line(m.body) > limit]
    if not over:
        return []
    return [Finding("long-lines", display(folder), f"{len(over)} message(s) with lines over {rules.name}'s limit "
                                                   f"of {limit} characters: rewrapped or refused", tuple(sorted(over)))]


def render(findings: Iterable[Finding]) -> list[str]:
    found = list(findings)
    if not found:
        return ["Preflight: nothing the destination is known to refuse or change."]
    return [f"Preflight: {len(found)} finding(s) before anything is copied:"] + ["  " + f.line() for f in found]
