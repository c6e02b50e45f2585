"""Application layer between the CLI and the engine: open state, run, write reports.

The CLI parses and prints; this module does what a command means. Dry-run is
decided here once (EngineOptions.dry_run) and honoured by the engine.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

from migrator.checkpoint import Checkpoint
from migrator.engine.copy import Engine, EngineOptions
from migrator.engine.verify import verify
from migrator.errors import UsageError
from migrator.fsutil import write_json
from migrator.plan import Plan
from migrator.planner import plan_folders
from migrator.progress import Progress
from migrator.report import render_run, render_verify, run_report, verify_report
from migrator.stats import Stats
from migrator.stores import Connector


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
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{plan.source.user}@{plan.source.host}")
    return os.path.join(state_dir(), f"{safe}-{digest}.sqlite")


def build_plan(plan: Plan, src: Connector, dst: Connector) -> Plan:
    s, d = src.open(), dst.open()
    try:
        return plan_folders(s, d, plan)
    finally:
        s.close()
        d.close()


def execute(plan: Plan, src: Connector, dst: Connector, settings: RunSettings, command: str,
            print_fn=print) -> dict:
    """Run a plan; returns the report dict (also written to --report)."""
    state_path = settings.state_path or default_state_path(plan)
    ckpt = None
    if not settings.engine.dry_run:
        if settings.reset_state:
            Checkpoint.reset(state_path)
        ckpt = Checkpoint(state_path)
    elif os.path.exists(state_path):
        ckpt = Checkpoint(state_path)  # read, to preview only what a real run would copy
    stats = Stats()
    for w in plan.warnings:
        stats.warn(w)
    stop = threading.Event()
    engine = Engine(plan, src.open, dst.open, ckpt, settings.engine, stats, stop)
    try:
        with Progress(stats, quiet=settings.quiet):
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


def execute_verify(plan: Plan, src: Connector, dst: Connector, include_deleted: bool, json_path: str | None,
                   as_json: bool, print_fn=print) -> dict:
    s, d = src.open(), dst.open()
    try:
        diffs = verify(plan, s, d, include_deleted=include_deleted)
    finally:
        s.close()
        d.close()
    report = verify_report(diffs, plan.source.url(), plan.destination.url())
    if json_path:
        write_json(json_path, report)
    if as_json:
        import json

        print_fn(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_fn(render_verify(report))
    return report


def require_network(plan: Plan) -> None:
    for ep in (plan.source, plan.destination):
        if not ep.is_network:
            raise UsageError(f"{ep.url()}: archives are not supported yet")
