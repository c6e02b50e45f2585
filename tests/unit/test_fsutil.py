"""The lock file the state file and an archive are held by: one process at a time, mode 0600."""

import os
import stat

import pytest

from migrator.errors import StateError
from migrator.fsutil import lock_exclusive


def test_a_held_lock_is_refused_with_the_callers_message_and_freed_by_close(tmp_path):
    path = str(tmp_path / "x.lock")
    held = lock_exclusive(path, "busy")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # flock belongs to the open file, so a second open in this process contends like another process
    with pytest.raises(StateError) as e:
        lock_exclusive(path, "x is in use", hint="wait")
    assert str(e.value) == "x is in use" and e.value.hint == "wait"
    held.close()
    lock_exclusive(path, "busy").close()


def test_a_lock_file_left_with_a_wider_mode_is_made_private(tmp_path):
    path = tmp_path / "x.lock"
    path.write_bytes(b"")
    path.chmod(0o644)
    lock_exclusive(str(path), "busy").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
