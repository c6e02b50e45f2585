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

from migrator.checkpoint import Checkpoint
from migrator.digest import short_digest
from migrator.engine import tuning
from migrator.engine.copy import Engine, EngineOptions
from migrator.engine.pairs import open_pair
from migrator.engine.verify import verify
from migrator.errors import UsageError
from migrator.fsutil import write_json
from migrator.naming import Folder, display
from migrator.plan import Plan
from migrator.planner import PlanningOptions, invalid_destination, plan_folders, planning_options
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
               with_status: bool = True) -> Plan:
    s, d = open_both(src, dst)
    try:
        return plan_folders(s, d, plan, opts, with_status)
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
            spare: tuple[Store, Store] | None = None) -> dict:
    """Run a plan; returns the report dict (also written to --report). spare: open connections
    (from plan_keeping_connections) the run uses first; closed by the run."""
    try:
        return _execute(plan, src, dst, settings, command, print_fn, folder_errors, spare)
    except BaseException:
        for store in spare or ():
            try:
                store.close()
            except Exception:
                pass
        raise


def _execute(plan: Plan, src: Connector, dst: Connector, settings: RunSettings, command: str, print_fn,
             folder_errors, spare) -> dict:
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
    stop = threading.Event()
    engine = Engine(plan, src.open, dst.open, ckpt, settings.engine, stats, stop, spare=spare)
    tuning.for_bulk_copy(settings.engine.batch_bytes)
    progress = Progress(stats, quiet=settings.quiet)
    if settings.engine.follow is not None:
        _follow_settings(settings.engine.follow, plan, stats, progress, None if settings.quiet else print_fn)
    try:
        with progress:
            engine.run()
    finally:
        if ckpt:
            ckpt.close()
    report = run_report(stats, command=command, source=plan.source.url(), destination=plan.destination.url(),
                        dry_run=settings.engine.dry_run, would_create=engine.would_create)
    report["state_file"] = state_path
    if settings.report_path:
        write_json(settings.report_path, report)
    if not settings.quiet or not report["ok"]:
        print_fn(render_run(report))
    return report


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
    diffs = verify(plan, src.open, dst.open, include_deleted=include_deleted, workers=workers)
    report = verify_report(diffs, plan.source.url(), plan.destination.url())
    if json_path:
        write_json(json_path, report)
    if as_json:
        import json

        print_fn(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_fn(render_verify(report))
    return report


def new_plan(src: Connector, dst: Connector) -> Plan:
    """An empty plan for two accounts named on the command line, refused at once if no store
    can serve the pair (before any connection is opened)."""
    plan = Plan(src.endpoint, dst.endpoint, source_secret=src.secret.describe(),
                destination_secret=dst.secret.describe())
    check_endpoints(plan)
    return plan


def check_endpoints(plan: Plan) -> None:
    """Refuse pairs no store can serve, before any connection is opened."""
    if not advertised(plan.destination).writable:
        raise UsageError(f"{plan.destination.url()}: {plan.destination.scheme}:// can only be a source "
                         "(it cannot store messages)")
