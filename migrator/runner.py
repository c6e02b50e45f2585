"""Application layer between the CLI and the engine: open state, run, write reports.

The CLI parses and prints; this module does what a command means. Dry-run is
decided here once (EngineOptions.dry_run) and honoured by the engine.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from migrator import preflight
from migrator.checkpoint import Checkpoint
from migrator.digest import short_digest
from migrator.engine import tuning
from migrator.engine.copy import Engine, EngineOptions
from migrator.engine.flagrules import FlagRules
from migrator.engine.pairs import open_pair
from migrator.engine.verify import verify
from migrator.errors import UsageError
from migrator.filters import Filters
from migrator.fsutil import write_json
from migrator.naming import Folder, display
from migrator.plan import Plan
from migrator.planner import PlanningOptions, invalid_destination, plan_folders, planning_options
from migrator.presets import DestinationRules, destination_rules, load_preset
from migrator.progress import Progress
from migrator.report import render_run, render_verify, run_report, verify_report
from migrator.stats import Stats
from migrator.stores import Connector, advertised
from migrator.stores.base import Store


@dataclass
class RunSettings:
    engine: EngineOptions
    state_path: str | None = None
    reset_state: bool = False
    report_path: str | None = None
    quiet: bool = False


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "migrator")


def default_state_path(plan: Plan) -> str:
    """Beside the plan file when there is one; else in the user state dir, named after both accounts."""
    if plan.path:
        root, _ = os.path.splitext(plan.path)
        return root + ".state.sqlite"
    key = f"{plan.source.url()} -> {plan.destination.url()}"
    digest = f"{short_digest(key.encode()):012x}"
    label = f"{plan.source.user}@{plan.source.host}" if plan.source.is_network else os.path.basename(plan.source.path)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    return os.path.join(state_dir(), f"{safe}-{digest}.sqlite")


def _identity(ep) -> str:
    """Which mailbox a state file belongs to: user and host (not scheme or port, which may change)."""
    return f"{ep.user}@{ep.host}" if ep.is_network else ep.url()


def build_plan(plan: Plan, src: Connector, dst: Connector, opts: PlanningOptions | None = None,
               with_status: bool = True, check: bool = False) -> Plan:
    """The plan of both servers' folders; check: with the preflight's findings (plan.preflight)."""
    s, d = open_both(src, dst)
    try:
        plan = plan_folders(s, d, plan, opts, with_status)
        if check:
            plan.preflight = [f.as_dict() for f in preflight.preflight(s, d, plan, destination_rules_of(plan))]
        return plan
    finally:
        s.close()
        d.close()


def plan_keeping_connections(plan: Plan, src: Connector, dst: Connector, opts: PlanningOptions | None = None,
                             with_status: bool = True) -> tuple[Plan, tuple[Store, Store]]:
    """Plan (refusing colliding destinations), and keep the two connections open for the run
    that follows at once (execute(spare=...)): one login less per side."""
    s, d = open_both(src, dst)
    try:
        plan = plan_folders(s, d, plan, opts, with_status)
        plan.check_collisions()
        return plan, (s, d)
    except BaseException:
        s.close()
        d.close()
        raise


def open_both(src: Connector, dst: Connector):
    """Both sides at once; passwords asked first, so two prompts never interleave on a terminal."""
    src.ask_secret()
    dst.ask_secret()
    return open_pair(src.open, dst.open)


def check_plan(plan: Plan, src: Connector, dst: Connector, delete_extra: bool = False) -> list[tuple[Folder, str]]:
    """Before running a plan (also an edited one): refuse what cannot be right, report what changed.

    Raises UsageError (with file and line) for colliding destinations, names the
    destination server cannot hold, and --delete-extra on a merged folder.
    Returns the planned source folders that no longer exist, as folder errors;
    they are taken out of the run. (A changed UIDVALIDITY is reported by the engine.)
    """
    from migrator.plan_io import dest_line

    plan.check_collisions()
    if delete_extra:
        merged = next((fp for fp in plan.copying() if fp.merge), None)
        if merged:
            raise UsageError(
                f"{plan.where(merged)}--delete-extra cannot be used with merge = true: "
                f"it would delete the other folder's messages from '{display(merged.destination)}'"
            )
    s, d = src.open(), dst.open()
    try:
        for fp in plan.copying():
            reason = invalid_destination(fp.destination, d.separator)
            if reason:
                raise UsageError(f"{dest_line(plan, fp)}destination '{display(fp.destination)}' is not valid on "
                                 f"{plan.destination.url()}: {reason}")
        listed = {f.name: f for f in s.list_folders()}
    finally:
        s.close()
        d.close()
    errors = []
    for fp in plan.copying():
        info = listed.get(fp.source)
        if info is None or not info.selectable:
            errors.append((fp.source, f"{plan.where(fp)}source folder '{display(fp.source)}' no longer exists "
                                      f"(it was planned with {fp.messages or 0} messages); nothing copied"))
            fp.action = "vanished"
    return errors


def execute(plan: Plan, src: Connector, dst: Connector, settings: RunSettings, command: str,
            print_fn=print, folder_errors: Sequence[tuple[Folder, str]] = (),
            spare: tuple[Store, Store] | None = None, stop: threading.Event | None = None) -> dict:
    """Run a plan; returns the report dict (also written to --report). spare: open connections
    (from plan_keeping_connections) the run uses first; closed by the run. stop: set by someone
    else to stop the run cleanly (a batch's Ctrl-C, seen from a pool thread or a cluster worker)."""
    try:
        return _execute(plan, src, dst, settings, command, print_fn, folder_errors, spare, stop)
    except BaseException:
        for store in spare or ():
            try:
                store.close()
            except Exception:
                pass
        raise


def destination_rules_of(plan: Plan) -> DestinationRules | None:
    """What the plan's destination presets (--dst-preset) say the destination refuses."""
    names = plan.options.get("dst_presets") or []
    return destination_rules(names) if isinstance(names, list) else None


def _checked_before_run(plan: Plan, src: Connector, dst: Connector, settings: RunSettings,
                        spare: tuple[Store, Store] | None) -> tuple[list[preflight.Finding], list[tuple[Folder, str]]]:
    """A dry run's preflight (on the spare connections, else on a pair of its own); and, for any
    run, the folders the destination cannot hold (preflight.folder_refusals), taken out of the run
    as folder errors; messages over a preset's ceiling are then reported by the march, not sent."""
    rules = destination_rules_of(plan)
    settings.engine.max_message_size = rules.max_message_ceiling if rules else None
    settings.engine.destination = rules
    # A provider's daily byte caps (presets: Gmail's 2,500 MB down, 500 MB up) bound --max-bytes-per-day.
    governors = settings.engine.governors
    governors.limit_budget("destination", rules.max_bytes_per_day if rules else None)
    presets = plan.options.get("presets")
    for name in presets if isinstance(presets, list) else []:
        governors.limit_budget("source", load_preset(name).max_bytes_per_day)
    findings: list[preflight.Finding] = []
    if settings.engine.dry_run:
        s, d = spare or open_both(src, dst)
        try:
            findings = preflight.preflight(s, d, plan, rules)
        finally:
            if spare is None:
                s.close()
                d.close()
    refused = []
    for fp, _rule, why in preflight.folder_refusals(plan, rules):
        fp.action = "refused"
        refused.append((fp.source, f"{why}: not copied (change its destination in the plan, or --map it)"))
    plan.warnings.extend(preflight.one_spelling(plan, rules))  # merged folders: one spelling, one folder
    return findings, refused


def _execute(plan: Plan, src: Connector, dst: Connector, settings: RunSettings, command: str, print_fn,
             folder_errors, spare, stop: threading.Event | None) -> dict:
    findings, refused = _checked_before_run(plan, src, dst, settings, spare)
    settings.engine.delete_extra = settings.engine.delete_extra or mirrors_by_default(plan)
    folder_errors = [*folder_errors, *refused]
    state_path = settings.state_path or default_state_path(plan)
    settings.engine.workers = _workers_for(plan, settings.engine.workers)
    ckpt = None
    if not settings.engine.dry_run:
        if settings.reset_state:
            Checkpoint.reset(state_path)
        ckpt = Checkpoint(state_path)
    elif os.path.exists(state_path):
        ckpt = Checkpoint(state_path)  # read, to preview only what a real run would copy
    if ckpt:
        try:
            ckpt.bind(_identity(plan.source), _identity(plan.destination), write=not settings.engine.dry_run)
        except Exception:
            ckpt.close()
            raise
    stats = Stats()
    for w in plan.warnings:
        stats.warn(w)
    for folder, reason in folder_errors:
        stats.folder_failed(folder, reason)
    stop = stop or threading.Event()
    engine = Engine(plan, src.open, dst.open, ckpt, settings.engine, stats, stop, spare=spare)
    tuning.for_bulk_copy(settings.engine.batch_bytes)
    progress = Progress(stats, quiet=settings.quiet)
    if settings.engine.follow is not None:
        _follow_settings(settings.engine.follow, plan, stats, progress, None if settings.quiet else print_fn)
    # Each pause a server asked for is said and reported; in a batch, those of other mailboxes on
    # the same hosts too (they pause this run as well).
    hosts = {"source": plan.source.host or "source", "destination": plan.destination.host or "destination"}
    try:
        with settings.engine.governors.joined(hosts, settings.engine.workers, stats.waited), progress:
            engine.run()
    finally:
        if ckpt:
            ckpt.close()
    report = run_report(stats, command=command, source=plan.source.url(), destination=plan.destination.url(),
                        dry_run=settings.engine.dry_run, would_create=engine.would_create)
    report["state_file"] = state_path
    report["destination_keeps_history"] = advertised(plan.destination).keeps_history
    if settings.engine.dry_run:
        report["preflight"] = [f.as_dict() for f in findings]
    if settings.report_path:
        write_json(settings.report_path, report)
    if not settings.quiet or not report["ok"]:
        print_fn(render_run(report))
    return report


def check_as_of(src: Connector) -> None:
    """--as-of names a snapshot: only a source that keeps them (an archive) has any."""
    if not advertised(src.endpoint).keeps_history:
        raise UsageError(f"--as-of: {src.endpoint.url()} keeps no snapshots (only an archive:// source does)")


def mirrors_by_default(plan: Plan) -> bool:
    """A destination that keeps snapshots (an archive) records what the source deleted: a run into
    it takes those messages out of its latest snapshot (keeping them in the earlier ones), as
    --delete-extra does. Not when filters leave messages out, nor onto a merged folder (the other
    folder's messages would be taken out): then the latest snapshot keeps them."""
    return (advertised(plan.destination).keeps_history and not plan.filters
            and not any(fp.merge for fp in plan.copying()))


def _follow_settings(follow, plan: Plan, stats: Stats, progress: Progress, print_fn) -> None:
    """--follow: where its lines go (none with --quiet), the progress stopped once the first pass is
    over, and new source folders planned by the rules the plan was made with."""
    def say(line: str) -> None:
        print_fn(f"follow: {line}")
        sys.stdout.flush()

    def first_pass_done() -> None:
        progress.stop()
        if print_fn is not None:
            say(f"first pass done: {stats.total('copied')} copied, {stats.total('already') + stats.total('found')} "
                "already there; following the source (Ctrl-C or SIGTERM ends)")

    follow.say = say if print_fn is not None else None
    follow.on_start = first_pass_done
    follow.plan_new = new_folder_planner(plan)


def new_folder_planner(plan: Plan):
    """Follow mode: (source, destination, folders planned so far) -> plans of the source folders
    not planned yet, by the mapping options the plan was made with (its [options])."""
    o = plan.options
    opts = planning_options(o.get("map", ()), o.get("include", ()), o.get("exclude", ()), o.get("folders", ()),
                            o.get("presets", ()), str(o.get("subscribe", "source")))

    def plan_new(s: Store, d: Store, known: list) -> list:
        fresh = plan_folders(s, d, Plan(plan.source, plan.destination), opts, with_status=False)
        sources = {fp.source for fp in known}
        taken = {fp.destination for fp in known if fp.action == "copy"}
        new = [fp for fp in fresh.folders if fp.source not in sources]
        for fp in new:
            if fp.action == "copy" and fp.destination in taken:  # never merged into a folder of another
                fp.action, fp.note = "skip", f"its destination '{display(fp.destination)}' is another folder's"
        return new

    return plan_new


def _workers_for(plan: Plan, workers: int) -> int:
    """No more sessions than the source allows at once (POP3 servers lock the maildrop: one)."""
    sessions = advertised(plan.source).sessions
    return min(workers, sessions) if sessions else workers


def execute_verify(plan: Plan, src: Connector, dst: Connector, include_deleted: bool, json_path: str | None,
                   as_json: bool, print_fn=print, workers: int = 1) -> dict:
    workers = _workers_for(plan, workers)
    src.ask_secret()
    dst.ask_secret()
    src.readonly = dst.readonly = True  # an archive is read, never refused while a backup writes
    rules = destination_rules_of(plan)  # flags the destination adds by itself are no difference
    preflight.one_spelling(plan, rules)  # folders merged into one, spelt otherwise: compared as one
    diffs = verify(plan, src.open, dst.open, include_deleted=include_deleted, workers=workers,
                   flag_rules=FlagRules.of_destination(rules))
    report = verify_report(diffs, plan.source.url(), plan.destination.url())
    if json_path:
        write_json(json_path, report)
    if as_json:
        import json

        print_fn(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_fn(render_verify(report))
    return report


def new_plan(src: Connector, dst: Connector, filters: Filters | None = None, delete_extra: bool = False) -> Plan:
    """An empty plan for two accounts named on the command line, with the filters given there;
    refused at once if no store can serve the pair or the run cannot honour the filters (before
    any connection is opened)."""
    plan = Plan(src.endpoint, dst.endpoint, source_secret=src.secret.describe(),
                destination_secret=dst.secret.describe(), filters=filters or Filters())
    check_endpoints(plan)
    check_filters(plan, delete_extra)
    return plan


def check_filters(plan: Plan, delete_extra: bool) -> None:
    """Refuse filters a run cannot honour, before any connection is opened."""
    if not plan.filters:
        return
    if delete_extra:
        raise UsageError(f"{plan.path + ': ' if plan.path else ''}--delete-extra cannot be used with filters "
                         f"({plan.filters.describe()}): it would delete the destination's copies of the messages "
                         "the filters leave out")
    if plan.filters.by_date and not advertised(plan.source).dated_listings:
        raise UsageError(f"--since/--before: {plan.source.url()} tells a message's date only from its bytes "
                         "(POP3), so a date filter would have to download every message; use --min-size/--max-size, "
                         "or no filter")


def check_endpoints(plan: Plan) -> None:
    """Refuse pairs no store can serve, before any connection is opened."""
    if not advertised(plan.destination).writable:
        raise UsageError(f"{plan.destination.url()}: {plan.destination.scheme}:// can only be a source "
                         "(it cannot store messages)")
