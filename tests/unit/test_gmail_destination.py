"""Gmail as a destination: which APPENDs Gmail dropped (within.dropped), and the label a folder is
given. The whole path runs against the stand-in in tests/e2e/test_provider_gmail_destination.py;
these are the cases that run does not show (a copy held before the run, below the folder's UIDNEXT;
special-use folders)."""

from __future__ import annotations

from migrator.engine.jobs import FolderRun
from migrator.engine.within import DUPLICATE_IN_FOLDER, HELD_ALREADY, dropped
from migrator.naming import INBOX
from migrator.plan import FolderPlan
from migrator.stores.base import FolderInfo
from migrator.stores.gmail import GmailCapableStore


def test_an_appenduid_naming_a_held_copy_is_a_dropped_append():
    run = FolderRun(FolderPlan(INBOX, INBOX), 1, dst_uidnext=10)
    run.appended.extend([10, 11])
    # 12: new; 4: held before the run; 11: this run's copy; 13 then 13: the second is a twin; None: unknown
    assert dropped(run, [12, 4, 11, 13, 13, None]) == [
        None, HELD_ALREADY, DUPLICATE_IN_FOLDER, None, DUPLICATE_IN_FOLDER, None]


def test_a_folder_is_labelled_with_its_system_label_or_its_name():
    listed = [FolderInfo(("INBOX",), "INBOX"), FolderInfo(("Work", "2024"), "Work/2024"),
              FolderInfo(("[Gmail]", "Sent Mail"), "[Gmail]/Sent Mail", special_use="\\Sent")]
    store = GmailCapableStore.__new__(GmailCapableStore)  # no connection: only the label naming
    store._folders, store.separator, store.prefix = GmailCapableStore._label_folders(listed), "/", ""
    assert store._label_of(INBOX) == "\\Inbox" and store._label_of(("[Gmail]", "Sent Mail")) == "\\Sent"
    assert store._label_of(("Work", "2024")) == "Work/2024"
