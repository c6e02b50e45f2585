r"""Throwaway Courier-IMAP 5 (Debian 12 packages) instances on 127.0.0.1, shaped like rig.Dovecot.

The packages are not installed (courier-imap `Conflicts: imap-server`, which dovecot-imapd
provides): `.ci/servers/courier.sh` unpacks them into /opt/migrator-test/courier (TREE).  Each
instance runs in its own mount namespace (`unshare -m --propagation private`), where read-only
overlays put TREE over /usr, /etc and /run, and bind mounts put the instance's own dirs on
/etc/courier and /run/courier.  The test process and the real /etc, /run, /usr are untouched;
nothing is shared between instances.

Facts found (and relied upon) while building this (courier-imap 5.0.13, courier-authlib 0.71.4):

* Compiled-in paths: authdaemond reads /etc/courier/authdaemonrc and listens on
  /run/courier/authdaemon/socket (libcourierauth connects there), dlopens its modules from
  /usr/lib/courier-authlib; authuserdb reads /etc/courier/userdb.dat + userdbshadow.dat (GDBM).
  imapd itself takes its settings from the environment: launch.sh sources the Debian files
  /etc/courier/imapd and imapd-ssl with `set -a`, as /usr/lib/courier/imapd{,-ssl} do.
* No courierlogger: couriertcpd runs in the foreground (no -pid) and it, imaplogin, imapd and
  authdaemond log to stderr, which goes to `courier.log`.  One line per LOGIN/DISCONNECTED.
* Users: userdb entries `uid=|gid=|home=|mail=` and `systempw={SHA256}base64`, compiled with
  the tree's makedatprog (what makeuserdb does, without perl), then renamed into place; no
  system users.  authdaemond sees a replaced userdb.dat at once, even within the same second
  (12 users added and logged in back to back: no mtime games needed, unlike Dovecot's
  passwd-file).  Mail is owned by rig.MAIL_USER.
* Session processes: `imapd` (comm) in the instance's mount namespace, with AUTHENTICATED=USER
  in /proc/PID/environ; before login they are `imaplogin`.  Found by namespace inode.
* Namespace: personal "INBOX." separator "."; shared "#shared." and "shared.".  Creating
  "INBOX.a.b" leaves "INBOX.a" \Noselect.  No MOVE, LITERAL+, MULTIAPPEND, CONDSTORE, BINARY.
* Maildir: INTERNALDATE is the file mtime, the zone given at APPEND is lost (we run with
  TZ=UTC, so it reads +0000).  Keywords are kept (courierimapkeywords/).
* What comes back from APPEND + FETCH BODY[] (shared corpus, 1,186 messages, none refused):
  every line ending is served as CRLF (bare LF and bare CR alike; Dovecot keeps bare CRs but
  a final one); a message without a final newline gets CRLF added (Dovecot: not); NUL bytes
  are kept (Dovecot: 0x80).  Messages with more than 299 MIME parts (rfc2045 MAXPARTS 300, the
  preamble counts) are stored whole but served cut at the boundary opening part 300,
  RFC822.SIZE included: over IMAP the loss is invisible
  (test_more_than_299_mime_parts_are_served_truncated).
* No MULTIAPPEND: rig.seed (imapclient multiappend) fails; APPEND one message at a time.
* kill_sessions: the client sees ECONNRESET; a reconnect right after is served.

Changes to the Debian defaults (appended to copies of /etc/courier/imapd and imapd-ssl):

* ADDRESS/SSLADDRESS=127.0.0.1 and free ports: loopback only.
* MAXDAEMONS=MAXPERIP=200 (Debian 40/20): tests and migrator workers open many sessions.
* IMAP_EMPTYTRASH= (Debian "Trash:7"): at every login and logout Courier deletes from Trash
  the messages whose file CTIME (not INTERNALDATE) is over 7 days old.  Fresh test mail would
  survive, but no message may vanish on a timer from under migrator or a test.
* IMAP_TLS_REQUIRED=0 (already Debian's value; stated so it stays): LOGIN in plaintext on loopback.
* TLS with a trustme CA: TLS_CERTFILE (key+cert), TLS_CACHEFILE under the instance's /run; the
  imaps couriertcpd runs couriertls without `-user=courier` (no courier system user).
* TZ=UTC in the environment (Debian: the system zone), as the Dovecot rig does.
* No -access file (Debian builds imapaccess.dat from an empty imapaccess dir: allow all).
Everything that touches messages (keywords, sanity checks, ULIMITD 128 MB, ...) stays default.
"""
from __future__ import annotations

import base64
import hashlib
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

TREE = Path(os.environ.get("MIGRATOR_COURIER_ROOT", "/opt/migrator-test/courier"))
INSTALLER = rig.REPO_ROOT / ".ci" / "servers" / "courier.sh"

_user_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _pw_hash(password: str) -> str:
    return "{SHA256}" + base64.b64encode(hashlib.sha256(password.encode()).digest()).decode()


def _own_mnt_ns() -> str:
    return os.readlink("/proc/self/ns/mnt")


class Courier:
    kind = "courier"
    separator = "."
    prefix = "INBOX."

    def __init__(self, root: str | Path | None = None, name: str = "courier", tls: bool = True):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="mgr-", dir="/tmp"))
        self._own_root = root is None
        self.name = name
        self.tls = tls
        self.uid, self.gid = rig.ensure_mail_user()
        self.dir = self.root / name
        self.etc_dir = self.dir / "etc"    # bound on /etc/courier inside the namespace
        self.run_dir = self.dir / "run"    # bound on /run/courier
        self.mail_dir = self.dir / "mail"
        self.log = self.dir / "courier.log"
        self.launch_script = self.dir / "launch.sh"
        self.port = self.imaps_port = 0
        self.pop3_port = 0
        self.ca_file: str | None = None
        self._users: dict[str, str] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ns: str | None = None
        self._logf = None
        self.start_seconds: float | None = None
        for d in (self.etc_dir, self.run_dir, self.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
        rig._ensure_traversable(self.dir)
        os.chmod(self.mail_dir, 0o755)

    # ---------------------------------------------------------------- config
    def _check_tree(self) -> None:
        missing = [p for p in ("usr/bin/imapd", "usr/sbin/couriertcpd", "usr/lib/courier/courier/imaplogin",
                               "usr/lib/courier/courier-authlib/authdaemond", "etc/courier/imapd",
                               "run/courier") if not (TREE / p).exists()]
        if missing:
            raise RuntimeError(f"Courier tree {TREE} incomplete (missing {', '.join(missing)}): "
                               f"run {INSTALLER} as root first")
        if os.geteuid() != 0:
            raise RuntimeError("Courier test servers need root (mount namespace, setuid to the mail user)")

    def _make_tls(self) -> None:
        import trustme
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = str(self.dir / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        pem = self.etc_dir / "imapd.pem"  # TLS_CERTFILE: private key and certificate chain in one file
        pem.write_bytes(cert.private_key_pem.bytes() + b"".join(c.bytes() for c in cert.cert_chain_pems))
        os.chmod(pem, 0o600)

    def _write_config(self) -> None:
        # Debian's files as shipped, then our overrides (see the module docstring for why).
        shutil.copy(TREE / "etc/courier/authdaemonrc", self.etc_dir / "authdaemonrc")
        with open(self.etc_dir / "authdaemonrc", "a") as f:
            f.write('\n# --- tests/servers/courier.py\nauthmodulelist="authuserdb"\ndaemons=3\n')
        shutil.copy(TREE / "etc/courier/imapd", self.etc_dir / "imapd")
        with open(self.etc_dir / "imapd", "a") as f:
            f.write(f"""
# --- tests/servers/courier.py: throwaway test instance {self.name}
ADDRESS=127.0.0.1
PORT={self.port}
MAXDAEMONS=200
MAXPERIP=200
IMAP_EMPTYTRASH=
""")
        shutil.copy(TREE / "etc/courier/imapd-ssl", self.etc_dir / "imapd-ssl")
        with open(self.etc_dir / "imapd-ssl", "a") as f:
            f.write(f"""
# --- tests/servers/courier.py
SSLADDRESS=127.0.0.1
SSLPORT={self.imaps_port}
IMAP_TLS_REQUIRED=0
IMAPDSTARTTLS={"YES" if self.tls else "NO"}
TLS_CERTFILE=/etc/courier/imapd.pem
TLS_CACHEFILE=/run/courier/couriersslcache
""")
        imapd_env = ("set -a; prefix=/usr; exec_prefix=/usr; sbindir=/usr/sbin; bindir=/usr/bin; "
                     ". /etc/courier/imapd; . /etc/courier/imapd-ssl; ")
        tcpd = ("/usr/sbin/couriertcpd -address=$ADDR -maxprocs=$MAXDAEMONS -maxperip=$MAXPERIP "
                "$TCPDOPTS $P")
        imaps = ""
        if self.tls:
            imaps = (f"env -i TZ=UTC PATH=/usr/bin:/bin /bin/sh -c '{imapd_env}IMAP_TLS=1; "
                     "ulimit -v $IMAP_ULIMITD; ADDR=$SSLADDRESS; P=$SSLPORT; "
                     f"exec {tcpd} $COURIERTLS -server -tcpd "
                     "/usr/lib/courier/courier/imaplogin /usr/bin/imapd $MAILDIRPATH' &\n")
        self.launch_script.write_text(f"""#!/bin/sh
# generated by tests/servers/courier.py; run by `unshare -m --propagation private`
set -e
T={TREE}
I={self.dir}
mount -t overlay courier-usr -o lowerdir=$T/usr:/usr /usr
mount -t overlay courier-etc -o lowerdir=$T/etc:/etc /etc
mount -t overlay courier-run -o lowerdir=$T/run:/run /run
mount --bind $I/etc /etc/courier
mount --bind $I/run /run/courier
mkdir -p /run/courier/authdaemon
cd /
env -i TZ=UTC PATH=/usr/bin:/bin /usr/lib/courier/courier-authlib/authdaemond &
n=0
while [ ! -S /run/courier/authdaemon/socket ]; do
    n=$((n+1)); [ $n -lt 200 ] || {{ echo "launch.sh: authdaemond socket missing" >&2; exit 1; }}
    sleep 0.05
done
{imaps}exec env -i TZ=UTC PATH=/usr/bin:/bin /bin/sh -c '{imapd_env}IMAP_STARTTLS=$IMAPDSTARTTLS; \
ulimit -v $IMAP_ULIMITD; ADDR=$ADDRESS; P=$PORT; \
exec {tcpd} /usr/lib/courier/courier/imaplogin /usr/bin/imapd $MAILDIRPATH'
""")

    def _write_userdb(self) -> None:
        """Compile userdb.dat/userdbshadow.dat from self._users (what makeuserdb does)."""
        plain, shadow = [], []
        for user, password in sorted(self._users.items()):
            home = self.mail_dir / user
            plain.append(f"{user}\tuid={self.uid}|gid={self.gid}|home={home}|mail={home}/Maildir\n")
            shadow.append(f"{user}\tsystempw={_pw_hash(password)}\n")
        env = {**os.environ, "LD_LIBRARY_PATH": str(TREE / "usr/lib")}
        makedat = str(TREE / "usr/lib/courier/courier-authlib/makedatprog")
        staged = []
        for lines, name, mode in ((plain, "userdb.dat", 0o644), (shadow, "userdbshadow.dat", 0o600)):
            tmp, out = self.etc_dir / f".{name}.tmp", self.etc_dir / f".{name}.new"
            r = subprocess.run([makedat, "-", str(tmp), str(out)], input="".join(lines) + ".\n",
                               text=True, capture_output=True, env=env)
            if r.returncode:
                raise RuntimeError(f"makedatprog {name} failed: {r.stderr.strip()}")
            os.chmod(out, mode)
            staged.append((out, self.etc_dir / name))
        for out, final in staged[::-1]:  # shadow first: a user is never in userdb without a password
            os.replace(out, final)

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> Courier:
        t0 = time.monotonic()
        self._check_tree()
        if self.tls and self.ca_file is None:
            self._make_tls()
        with self._lock:
            self._write_userdb()
        last_err = None
        for attempt in range(3):  # free ports can be raced away: retry with new ones
            if attempt or not self.port:
                self.port = rig.free_port()
                self.imaps_port = rig.free_port() if self.tls else 0
            try:
                self._launch(timeout)
                self.start_seconds = time.monotonic() - t0
                return self
            except Exception as e:  # noqa: BLE001
                last_err = str(e)
                self.stop()
        raise RuntimeError(f"Courier {self.name} failed to start: {last_err}\n"
                           f"--- last lines of {self.log} ---\n{self.log_tail()}")

    def _launch(self, timeout: float) -> None:
        self._write_config()
        self._logf = open(self.log, "ab")
        self._proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "/bin/sh", str(self.launch_script)],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf,
            start_new_session=True)  # own process group: no terminal signals, a fallback to find them
        rig._live.add(self)  # stopped at interpreter exit like the Dovecot instances
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        err = None
        ports = [self.port] + ([self.imaps_port] if self.tls else [])
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"launch.sh exited with {self._proc.returncode}")
            if self._ns is None:
                try:
                    ns = os.readlink(f"/proc/{self._proc.pid}/ns/mnt")
                    if ns != _own_mnt_ns():  # unshare has run
                        self._ns = ns
                except OSError:
                    pass
            try:
                with socket.create_connection(("127.0.0.1", ports[0]), timeout=2) as s:
                    s.settimeout(5)
                    greeting = s.recv(1024)
                if not greeting.startswith(b"* OK"):
                    err = f"unexpected greeting {greeting!r}"
                    time.sleep(0.05)
                    continue
                for p in ports[1:]:
                    socket.create_connection(("127.0.0.1", p), timeout=2).close()
                if self._ns is not None:
                    return
            except OSError as e:
                err = repr(e)
            time.sleep(0.05)
        raise RuntimeError(f"imap port {self.port} not ready after {timeout}s: {err}")

    def pids(self) -> list[int]:
        """Every live process of this instance: same mount namespace, or same process group."""
        own = _own_mnt_ns()
        pgid = self._proc.pid if self._proc is not None else None
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                if self._ns is not None and self._ns != own and os.readlink(f"/proc/{pid}/ns/mnt") == self._ns:
                    out.append(pid)
                elif pgid is not None and os.getpgid(pid) == pgid:
                    out.append(pid)
            except OSError:
                continue
        return [p for p in out if p != os.getpid()]

    def master_pid(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def _signal_all(self, sig: int) -> int:
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every process of the instance, SIGKILL what is left; the namespace goes with them."""
        if self._signal_all(signal.SIGTERM):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.pids():
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.05)
        for _ in range(100):
            if not self._signal_all(signal.SIGKILL):
                break
            if self._proc is not None:
                self._proc.poll()
            time.sleep(0.05)
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._proc = None
        self._ns = None
        if self._logf is not None:
            self._logf.close()
            self._logf = None
        rig._live.discard(self)

    def restart(self, timeout: float = 20.0) -> Courier:
        """Stop everything, start again on the same ports (accounts keep working)."""
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
        raise RuntimeError(f"Courier {self.name} failed to restart: {last}\n{self.log_tail()}")

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

    # -------------------------------------------------------------- sessions
    def session_pids(self, user: str | None = None) -> list[int]:
        """Logged-in imapd processes (not imaplogin, couriertls or the daemons); by user if given."""
        out = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:  # "PID (comm) STATE ...": skip zombies
                    comm, _, rest = f.read().partition("(")[2].rpartition(")")
                    if comm != "imapd" or rest.split()[0] == "Z":
                        continue
                if user is not None:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if f"AUTHENTICATED={user}".encode() not in f.read().split(b"\0"):
                            continue
            except OSError:
                continue
            out.append(pid)
        return out

    def kill_sessions(self, user: str | None = None, sig: int = signal.SIGKILL) -> int:
        """Drop IMAP sessions server-side (default: SIGKILL, like a crash). Returns how many."""
        pids = self.session_pids(user)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)

    # ----------------------------------------------------------------- users
    def _make_maildir(self, user: str) -> None:
        home = self.mail_dir / user
        for d in (home, home / "Maildir", *(home / "Maildir" / s for s in ("cur", "new", "tmp"))):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chown(d, self.uid, self.gid)

    def new_user(self, prefix: str = "u", **kw) -> rig.Account:
        """A user with an empty INBOX who can log in at once.  Dovecot.new_user's keywords
        (quota=, max_mail_size=) are accepted when None; limits are not implemented here."""
        unsupported = {k: v for k, v in kw.items() if v is not None}
        if unsupported:
            raise NotImplementedError(f"Courier.new_user does not implement {sorted(unsupported)}")
        with _counter_lock:
            n = next(_user_counter)
        user = f"{prefix}{rig.worker_id()}n{n}{secrets.token_hex(2)}"
        password = secrets.token_urlsafe(12)
        self._make_maildir(user)
        with self._lock:
            self._users[user] = password
            self._write_userdb()
        return self.account(user)

    def account(self, user: str) -> rig.Account:
        return rig.Account(port=self.port, imaps_port=self.imaps_port, pop3_port=self.pop3_port,
                           user=user, password=self._users[user], separator=self.separator,
                           prefix=self.prefix, server=self)
