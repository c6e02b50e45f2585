"""Gmail as a destination: which APPENDs Gmail dropped (within.dropped). The whole path runs
against the stand-in in tests/e2e/test_provider_gmail_destination.py; this is the one case the
stand-in run cannot show (a copy held before the run, below the folder's UIDNEXT)."""

from __future__ import annotations

from migrator.engine.jobs import FolderRun
from migrator.engine.within import DUPLICATE_IN_FOLDER, HELD_ALREADY, dropped
from migrator.naming import INBOX
from migrator.plan import FolderPlan


def test_an_appenduid_naming_a_held_copy_is_a_dropped_append():
    run = FolderRun(FolderPlan(INBOX, INBOX), 1, dst_uidnext=10)
    run.appended.extend([10, 11])
    # 12: new; 4: held before the run; 11: this run's copy; 13 then 13: the second is a twin; None: unknown
    assert dropped(run, [12, 4, 11, 13, 13, None]) == [
        None, HELD_ALREADY, DUPLICATE_IN_FOLDER, None, DUPLICATE_IN_FOLDER, None]
