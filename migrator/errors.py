"""Error classes and the exit codes they map to.

Every failure migrator knows about is one of these. The CLI has a single error
boundary (cli.main) that turns them into one line and an exit code; nothing
below the CLI prints or exits. The level says how much work a failure gives up
(like mbsync: a bad message skips one message, a bad folder one folder, a bad
store the run).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_MESSAGES_FAILED = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_BUDGET = 75  # sysexits' EX_TEMPFAIL: try again later (--max-bytes-per-day spent)
EXIT_INTERRUPTED = 130


class MigratorError(Exception):
    """Base: a failure with a one-line, secret-free message for the user."""

    exit_code = EXIT_MESSAGES_FAILED
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(MigratorError):
    """Bad URL, bad option, bad plan file: the user must change the command."""

    exit_code = EXIT_USAGE


class ConnectionFailed(MigratorError):
    """Cannot reach, secure or log in to a server (DNS, refused, TLS, auth)."""

    exit_code = EXIT_CONNECTION


class TransientError(MigratorError):
    """Connection dropped, timeout, BYE, [UNAVAILABLE]/[THROTTLED]: retry after reconnecting."""

    exit_code = EXIT_MESSAGES_FAILED


class Throttled(TransientError):
    """The server asked us to slow down (a throttle answer: `[THROTTLED]`, `[UNAVAILABLE]`,
    Microsoft 365's `Request is throttled. Suggested Backoff Time: N ms`). Nothing of the refused
    command is stored; `stored` as in MessageRejected (the messages of a batch sent one APPEND at
    a time that went in before the throttled one)."""

    def __init__(self, message: str, hint: str | None = None, stored: list | None = None):
        super().__init__(message, hint)
        self.stored = stored


class FolderError(MigratorError):
    """One folder cannot be processed (vanished, cannot be created); others go on."""


class MessageRejected(MigratorError):
    """The destination refused one message permanently (too big, [PARSE], [OVERQUOTA]).

    stored: None when nothing of what was sent is stored (one message, or a MULTIAPPEND batch,
    which RFC 3502 makes all or nothing). A list when a batch went one APPEND at a time (a server
    without MULTIAPPEND): the UIDs (None where unknown) of the messages before the refused one,
    which are stored; the refused one is the next."""

    def __init__(self, message: str, hint: str | None = None, stored: list | None = None):
        super().__init__(message, hint)
        self.stored = stored


class StateError(MigratorError):
    """The checkpoint store is corrupt, foreign, or locked by another run."""

    exit_code = EXIT_USAGE


class StorageError(MigratorError):
    """A local file migrator keeps (an archive, a state file) cannot be written or is damaged: disk
    full, a read-only file system, a vanished mount, a corrupt index. Nothing after it could be
    kept, so the run stops at once (no folder is tried after it)."""


class BudgetSpent(MigratorError):
    """--max-bytes-per-day is spent for an account: the run stops cleanly, its journal kept, and the
    same command run the next day goes on (as imapsync's --exitwhenover, which Gmail users run
    once a day)."""

    exit_code = EXIT_BUDGET


class Interrupted(MigratorError):
    """Ctrl-C or SIGTERM: the run stopped cleanly and can be resumed."""

    exit_code = EXIT_INTERRUPTED
