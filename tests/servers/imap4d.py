r"""Throwaway GNU Mailutils imap4d 3.15 instances on 127.0.0.1 (Debian 12 `mailutils-imap4d`).

Same shape as `tests.rig.Dovecot`: `Imap4d(root).start()`, `new_user()` -> `rig.Account`,
`kill_sessions()`, `stop()`, `restart()`, `cleanup()`.  Installed by `.ci/servers/imap4d.sh`.

How an instance runs: `imap4d --config-file=DIR/imap4d.conf --foreground` as our child
(daemon mode, one forked process per connection, stderr -> DIR/imap4d.log, no syslog), a
`server 127.0.0.1:PORT` block with backlog 64 and max-children 200, no TLS (`ca_file` is None).
Users are mailutils virtual-domain users (`auth { authorization virtdomain; authentication
generic; }`): one passwd(5)-format file DIR/virt/imap4d.test with crypt(3) SHA-512 hashes,
nothing is added to the machine's /etc/passwd, no mount namespace.  Mail stays in
DIR/mail/LOCALPART (mbox files; INBOX is DIR/mail/LOCALPART/INBOX).

Facts found while building this (imap4d 3.15; pinned by tests/e2e/test_server_imap4d.py):

* virtdomain finds a user only by a name with a domain part (`local@domain`, also `!`, `:`),
  in the file passwd-dir/domain, re-read at every login (new users log in at once).  A bare
  name falls back to a lookup by the address of fd 0, which in daemon mode is not the
  socket: refused.  So logins are `u...@imap4d.test`; `Account.url` is then
  `imap://u...@imap4d.test@127.0.0.1:PORT`, which migrator parses (last '@').
* virtdomain users keep the session as root (files root:mail 0600).  A logged-in session
  chdir()s to the user's home: `session_pids(user)` / `kill_sessions(user)` use that.  All
  processes share the master's cmdline (`--config-file=DIR/imap4d.conf`).
* Default listen backlog is 4 (we set 64).  12+ concurrent sessions work.
* Greeting `* OK IMAP4rev1`.  CAPABILITY: IMAP4rev1 NAMESPACE ID IDLE LITERAL+ UNSELECT and,
  with GNU SASL on (default), a long AUTH= list; the same after LOGIN, only AUTH=GSSAPI left
  after AUTHENTICATE.  No UIDPLUS, MULTIAPPEND, CONDSTORE, ENABLE, MOVE, SPECIAL-USE.
* `AUTHENTICATE PLAIN` answers `TAG OK AUTHENTICATE PLAIN authentication successful\n` (bare
  LF; LOGIN's OK is CRLF).  `sasl=False` leaves only LOGIN (`NO ... mechanism not supported`).
* NAMESPACE `(("" "/")) NIL NIL`: separator '/', no prefix.  INBOX is `(\NoInferiors) NIL`.
  CREATE a/b/c: a and a/b are `\NoSelect` directories, a/b/c an mbox file (`\NoInferiors`).
* Keywords: APPEND with any keyword -> `TAG BAD APPEND Unrecognized flag` (nothing stored);
  STORE -> `TAG BAD STORE Unrecognized flag` (`BAD UID STORE ...`).  PERMANENTFLAGS has no \*.
* INTERNALDATE: seconds; APPEND's date keeps its wall-clock digits and loses its offset
  ("15:09:26 +0530" reads back "15:09:26 +0000"), whatever the server's TZ.  Without a date:
  the message's own leading "From " line, else its Date: (converted to UTC), else
  01-Jan-1970 00:00:00 +0000.  APPEND without a date refuses a message with no usable From:
  (`NO APPEND [TRYCREATE] failed`); with a date those go in (sender "GNU-imap4d").
* mbox (default): BODY[] is never what was sent.  APPEND writes `X-UID: n` (+ `Status:`
  when flags are given; the first message of a folder also gets `X-IMAPbase: UIDVALIDITY
  UIDNEXT`, rewritten at each APPEND) and these are served at once; `Status: O` is added
  when a read-write session leaves the folder.  Bare LF is served as CRLF; a leading
  "From " line is taken as envelope and removed; header fields are re-spaced ("Name:value"
  -> "Name: value", re-done at every rewrite); a message is cut at its first NUL; a header
  with no body gets CRLFs appended; body "From " lines are >From-quoted on disk and served
  back unquoted.  RFC822.SIZE == len(BODY[]).  Refused (NO [TRYCREATE] failed): a header
  section with a line that is not a field.  A refused APPEND (no date) of a message whose
  first line is "From ADDR" without a date is still written (and takes a UID) behind an
  invalid separator: it becomes part of the previous message's body.
  benchmarks/imap4d_corpus.py measures all this on the shared corpus.
* mbox data loss: a session that SELECTed an EMPTY folder sees only the first message
  appended after that (by anyone); when it leaves the folder (CLOSE, UNSELECT, EXPUNGE,
  SELECT, LOGOUT, disconnect) the file is rewritten from its view: the later messages are
  deleted and the first loses its APPEND flags.  Several sessions APPENDing to one folder at
  once also lose messages now and then (all answered OK; once a session died of a glibc
  malloc assertion and half the folder was gone).
* Locking: dotlock FOLDER.lock, held only while writing (no lock while a folder is just
  selected).  A session killed while holding it leaves the lock: SELECT then answers after
  ~9 s `NO SELECT Could not open F: Conflict with previous locker`, APPEND
  `NO APPEND [TRYCREATE] failed`; STATUS works.  APPEND is slow: 0.25-0.45 MB/s over
  the corpus, a 3 MB message takes ~3 s, 40 MB ~50 s.
* `mailbox_type="maildir"`: BODY[] as sent (CRLF messages), APPEND to a selected empty folder
  keeps everything, messages without From: accepted, but APPEND's flags and date are dropped
  (FLAGS (\Recent), INTERNALDATE = arrival time); keywords still BAD; UIDs may skip.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests import rig

DOMAIN = "imap4d.test"

_user_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _find_imap4d() -> str:
    exe = shutil.which("imap4d") or ("/usr/sbin/imap4d" if os.path.exists("/usr/sbin/imap4d") else None)
    if not exe:
        raise RuntimeError("imap4d not found: run .ci/servers/imap4d.sh (apt-get install mailutils-imap4d)")
    return exe


def _crypt_sha512(password: str) -> str:
    """crypt(3) with a SHA-512 salt, as mailutils' `generic` authentication checks it."""
    salt = "$6$" + secrets.token_hex(8) + "$"
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(name)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    out = lib.crypt(password.encode(), salt.encode())
    if not out or not out.startswith(b"$6$"):
        raise RuntimeError("crypt(3) did not produce a SHA-512 hash")
    return out.decode()


class Imap4d:
    kind = "imap4d"

    def __init__(self, root: str | Path | None = None, name: str = "imap4d",
                 sasl: bool = True, mailbox_type: str = "mbox", transcript: bool = False):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="mgr-", dir="/tmp"))
        self._own_root = root is None
        self.name = name
        self.sasl = sasl  # GNU SASL on (the default users run): AUTHENTICATE PLAIN etc. offered
        self.mailbox_type = mailbox_type  # "mbox" (default) or "maildir"
        self.transcript = transcript  # log every command and response (debugging)
        self.separator = "/"
        self.prefix = ""
        self.ca_file = None  # plaintext on loopback only
        self.domain = DOMAIN
        self.tz = "UTC"  # the server's TZ: mbox "From " lines keep wall-clock time only
        self.dir = self.root / name
        self.mail_dir = self.dir / "mail"
        self.virt_dir = self.dir / "virt"
        self.conf = self.dir / "imap4d.conf"
        self.log = self.dir / "imap4d.log"
        self.pidfile = self.dir / "imap4d.pid"
        self.port = 0
        self.imaps_port = self.pop3_port = 0
        # virtdomain sessions never switch to these ids (they stay root): any values do, and
        # no system user is needed.  65534 = nobody/nogroup.
        self.uid = self.gid = 65534
        self._users: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        for d in (self.mail_dir, self.virt_dir):
            d.mkdir(parents=True, exist_ok=True)
        rig._ensure_traversable(self.dir)
        self._write_passwd()

    # ---------------------------------------------------------------- config
    def _config(self) -> str:
        return f"""# generated by tests/servers/imap4d.py -- throwaway test instance {self.name}
logging {{
  syslog no;
}};
mode daemon;
foreground yes;
max-children 200;
pidfile "{self.pidfile}";
timeout 1800;
tcp-wrappers {{
  enable no;
}};
auth {{
  authorization virtdomain;
  authentication generic;
}};
virtdomain {{
  passwd-dir "{self.virt_dir}";
}};
gsasl {{
  enable {"yes" if self.sasl else "no"};
}};
mailbox {{
  mailbox-type {self.mailbox_type};
}};
server 127.0.0.1:{self.port} {{
  backlog 64;
  transcript {"yes" if self.transcript else "no"};
}};
"""

    def _write_passwd(self) -> None:
        """Rewrite DIR/virt/DOMAIN atomically (virtdomain re-reads it on every login)."""
        lines = "".join(
            f"{info['local']}:{info['hash']}:{self.uid}:{self.gid}::{info['home']}:/usr/sbin/nologin\n"
            for info in self._users.values())
        path = self.virt_dir / self.domain
        tmp = self.virt_dir / f".{self.domain}.tmp"
        tmp.write_text(lines)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> Imap4d:
        last_err = None
        for attempt in range(3):  # a free port can be raced away: retry with a new one
            if attempt or not self.port:
                self.port = rig.free_port()
            try:
                self._launch(timeout)
                return self
            except Exception as e:  # noqa: BLE001
                last_err = str(e)
                self.stop()
        raise RuntimeError(f"imap4d {self.name} failed to start: {last_err}\n"
                           f"--- last lines of {self.log} ---\n{self.log_tail()}")

    def _launch(self, timeout: float) -> None:
        self.conf.write_text(self._config())
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [_find_imap4d(), f"--config-file={self.conf}", "--foreground"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(self.dir),
                env={**os.environ, "TZ": self.tz},
                start_new_session=True)  # no terminal signals from the test runner
        rig._live.add(self)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        err = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"imap4d exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    greeting = s.recv(1024)
                    if greeting.startswith(b"* OK"):
                        s.sendall(b"z LOGOUT\r\n")
                        return
                    err = f"unexpected greeting {greeting!r}"
            except OSError as e:
                err = repr(e)
            time.sleep(0.05)
        raise RuntimeError(f"imap port {self.port} not ready after {timeout}s: {err}")

    def master_pid(self) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    def pids(self) -> list[int]:
        """All live processes of this instance: the master and its forked sessions all
        have the cmdline `imap4d --config-file=DIR/imap4d.conf --foreground`."""
        want = f"--config-file={self.conf}".encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
            except OSError:
                continue
            if want in args and state != b"Z":
                out.append(int(entry))
        return out

    def session_pids(self, user: str | None = None) -> list[int]:
        """Forked per-connection processes (not the master); by user if given: a logged-in
        session's working directory is the user's home."""
        master = self.master_pid()
        home = None
        if user is not None:
            home = os.path.realpath(self._users[user]["home"])
        out = []
        for pid in self.pids():
            if pid == master:
                continue
            if home is not None:
                try:
                    if os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) != home:
                        continue
                except OSError:
                    continue
            out.append(pid)
        return out

    def kill_sessions(self, user: str | None = None, sig: int = signal.SIGKILL) -> int:
        """SIGKILL the server-side session processes (all, or USER's), as a crash would.

        Returns the number of processes signalled."""
        pids = self.session_pids(user)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master (SIGTERM, then SIGKILL) and SIGKILL every session it forked."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        rig._live.discard(self)

    def restart(self, timeout: float = 20.0) -> Imap4d:
        """Stop everything, start again on the same port (accounts keep working)."""
        self.stop()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                self._launch(timeout)
                return self
            except Exception as e:  # noqa: BLE001  (e.g. port briefly unavailable)
                last = str(e)
                self.stop()
                time.sleep(0.2)
        raise RuntimeError(f"imap4d {self.name} failed to restart: {last}\n{self.log_tail()}")

    def cleanup(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ----------------------------------------------------------------- users
    def new_user(self, prefix: str = "u", quota: str | None = None,
                 max_mail_size: str | None = None, **kw) -> rig.Account:
        """A virtual-domain user `PREFIX<worker>n<N><hex>@imap4d.test`; logs in at once."""
        if quota or max_mail_size or kw:
            raise NotImplementedError("imap4d test instances have no quota/size limits "
                                      f"(got quota={quota!r}, max_mail_size={max_mail_size!r}, {kw!r})")
        with _counter_lock:
            n = next(_user_counter)
        local = f"{prefix}{rig.worker_id()}n{n}{secrets.token_hex(2)}"
        user = f"{local}@{self.domain}"
        password = secrets.token_urlsafe(12).replace(":", "x")
        home = self.mail_dir / local
        home.mkdir(parents=True, exist_ok=True)
        # An empty INBOX, as a system's mail spool has once mail was delivered: without the file,
        # imap4d answers APPEND to INBOX with NO [TRYCREATE] (and CREATE INBOX is refused).
        (home / "INBOX").touch(mode=0o600)
        with self._lock:
            self._users[user] = {"local": local, "password": password, "home": str(home),
                                 "hash": _crypt_sha512(password)}
            self._write_passwd()
        return self.account(user)

    def account(self, user: str) -> rig.Account:
        info = self._users[user]
        return rig.Account(port=self.port, imaps_port=0, pop3_port=0, user=user,
                           password=info["password"], separator=self.separator,
                           prefix=self.prefix, server=self)

    def mailbox_path(self, account: rig.Account, components=("INBOX",)) -> Path:
        """The file (mbox) or directory (maildir) that holds a folder of ACCOUNT."""
        home = Path(self._users[account.user]["home"])
        if isinstance(components, str):
            components = [components]
        return home.joinpath(*components)
