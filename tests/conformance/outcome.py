"""The one promise every pair of ends is held to, as a check on what the servers really hold.

For every source message: either the destination holds it identical (same bytes, flags, keywords
and INTERNALDATE, as an instant) or migrator's report names it (folder and source UID) with a
reason. Nothing else is on the destination: at most one (altered) copy per reported message, so a
duplicate fails the check. The exit code says which: 0 when nothing is reported, 1 otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# rig.messages_by_uid, ends.End.listing: {folder components: {uid: (sha, flags, UTC date or None)}}
Listing = dict[tuple, dict[int, tuple]]


def display(components: tuple) -> str:
    return "/".join(components)


@dataclass
class Outcome:
    identical: int = 0
    reported: dict[tuple[str, int], str] = field(default_factory=dict)  # (folder, uid) -> reason
    problems: list[str] = field(default_factory=list)

    def reasons(self) -> Counter:
        return Counter(reason.split(" (")[0][:90] for reason in self.reported.values())


def settle(src: Listing, dst: Listing, report: dict, flags_kept=lambda flags: flags) -> Outcome:
    """Hold dst against src and the report. flags_kept: the flags a source message is expected to
    keep on this destination when nothing is reported about them (all of them)."""
    out = Outcome()
    failures = {(f["folder"], int(f["uid"])): f["reason"] for f in report.get("failures", [])}
    folder_errors = {f["folder"]: f["reason"] for f in report.get("folder_errors", [])}
    for folder, msgs in sorted(src.items()):
        name = display(folder)
        held = Counter(dst.get(folder, {}).values())
        reported_here = 0
        for uid, (sha, flags, date) in sorted(msgs.items()):
            reason = failures.get((name, uid)) or folder_errors.get(name)
            if reason is not None:
                out.reported[(name, uid)] = reason
                reported_here += 1
                continue
            want = (sha, tuple(flags_kept(flags)), date)
            if _take(held, want):
                out.identical += 1
                continue
            near = [m for m in held.elements() if m[0] == sha]
            out.problems.append(f"{name} UID {uid}: not on the destination and not reported"
                                + (f" (same bytes held as {near[0][1:]}, source has {want[1:]})" if near else ""))
        extra = sum(held.values())
        if extra > reported_here:
            out.problems.append(f"{name}: {extra} message(s) on the destination that the source does not hold "
                                f"(only {reported_here} reported): duplicates or strays")
    for folder, msgs in dst.items():
        if folder not in src and msgs:
            out.problems.append(f"{display(folder)}: {len(msgs)} message(s) in a folder the source does not have")
    return out


def _take(held: Counter, want: tuple) -> bool:
    """Take one copy of `want` from `held`, if there is one. A source date of None (a POP3 message
    whose headers give no date: ends.pop3_messages) matches a copy of any date: the destination
    dated it. An IMAP or archive source always has a date."""
    sha, flags, date = want
    if date is None:
        want = next((held_as for held_as, n in held.items() if n > 0 and held_as[:2] == (sha, flags)), want)
    if held[want] > 0:
        held[want] -= 1
        return True
    return False


def assert_kept(outcome: Outcome, report: dict, code: int) -> None:
    assert not outcome.problems, "\n".join(outcome.problems[:20])
    expected = 1 if outcome.reported or report.get("folder_errors") else 0
    assert code == expected, (code, expected, dict(outcome.reasons()))
