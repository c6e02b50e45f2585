"""Test-only crash points, so the fault tests can kill -9 the run at exact moments.

MIGRATOR_TEST_CRASH_AT="NAME:N" makes the process SIGKILL itself (no cleanup,
no atexit, no flush: exactly like `kill -9`) the Nth time the engine passes the
point NAME. Without the variable (always, outside the tests) crash() is a no-op.

Points (docs/engine.md lists where each sits): march-listed (sync.py),
pool-fetched, fetched (a batch of source bodies, to copy or, in the march, to
fingerprint), adopted, late-twin-removed (a copy sent again was removed because
the first APPEND was committed late) (matching.py); flags-set (sync.py);
intent-written, append-sent (the server stored the messages, the checkpoint does
not know yet), confirmed (copying.py); end-deferred (a folder's size check waits
for the next folder's SELECT), expunged (ending.py); compact-written (new data files written and
fsync'ed, the index not switched), compact-switched (the index switched, the old files still
there) (stores/archive_compact.py).

Shared by the engine and the archive store, so it sits below both.
"""

from __future__ import annotations

import os
import signal
import threading

_name, _, _count = os.environ.get("MIGRATOR_TEST_CRASH_AT", "").partition(":")
_at = int(_count or 1) if _name else 0
_seen = 0
_lock = threading.Lock()


def crash(point: str) -> None:
    global _seen
    if point != _name:
        return
    with _lock:
        _seen += 1
        if _seen == _at:
            os.kill(os.getpid(), signal.SIGKILL)
