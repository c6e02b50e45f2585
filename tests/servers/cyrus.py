r"""Throwaway Cyrus IMAP 3.6 (Debian 12 packages) instances on 127.0.0.1, shaped like rig.Dovecot.

The packages are unpacked, not installed (cyrus-imapd Conflicts: imap-server, i.e. Dovecot):
`.ci/servers/cyrus.sh` puts them in /opt/migrator-test/cyrus (MIGRATOR_CYRUS_ROOT) and creates
the system user `cyrus`.  Each instance has its own imapd.conf, cyrus.conf, config directory,
partition, proc/lock dirs, sasldb, log, TLS cert and ports; sockets and the pid file live in a
short dir under /tmp (unix socket paths < 108 chars).

Facts found while building this (Cyrus 3.6.1-4+deb12u5):

* The config is Debian's shipped /etc/imapd.conf from the unpacked tree, with only its paths
  moved under the instance and the lines below added.  Debian's file sets altnamespace: no and
  unixhierarchysep: no (the compiled-in defaults are the opposite): personal namespace "INBOX."
  with separator "."; a user's folders are user.NAME.* to the admin; user names cannot contain
  a "." in that mode.  Debian's imapd.conf also has allowplaintext: yes (LOGIN on plain
  connections), sasl_pwcheck_method: auxprop; compiled-in munge8bit: yes, reject8bit: no.
* Cyrus logs ONLY through syslog(3), i.e. to /dev/log, which does not exist here (no syslogd):
  a config error is a silent exit 78.  So master runs in a private mount namespace
  (`unshare -m`) with a small tmpfs /dev (null, zero, urandom ... bind-mounted from the real
  one) whose /dev/log is a symlink to the instance's own datagram socket; a thread of the test
  process writes what arrives there to cyrus.log.  `pids()` finds an instance's processes by
  that mount namespace AND "-C CONF" in their argv (Cyrus keeps its argv; master and imapd run
  as the cyrus user).
* A key given twice in imapd.conf is fatal ("option ... was specified twice"), so Debian's lines
  are replaced, not overridden by appending.
* master runs START commands (ctl_cyrusdb -r) before it listens; services' cmd= must be
  absolute paths (master otherwise looks in the compiled-in /usr/lib/cyrus/bin), and each needs
  its own -C CONF (master -C is not passed on: the child reads /etc/imapd.conf).
  master_bind_errors_fatal: yes makes a taken port an exit, not a silently missing listener.
* Logins: sasldb (saslpasswd2 -f DB -u REALM), run as the cyrus user so imapd can read it; the
  realm must equal `servername` (an entry saved without -u gets the host name as realm and its
  login fails: "user not found").
* Users: the admin (`admins: cyrus`) CREATEs user.NAME; the INBOX is usable at once.
  (Debian's autocreate_quota: 0 also creates it at the first login: "autocreateinbox".)
* Creating INBOX.a.b.c makes INBOX.a and INBOX.a.b real, selectable mailboxes (Dovecot leaves
  such parents \Noselect).
* CAPABILITY: the greeting lists only IMAP4rev1 LITERAL+ ID ENABLE STARTTLS AUTH=... SASL-IR; an
  explicit CAPABILITY before login gives the full list; after login it also lists
  LOGINDISABLED.  UIDPLUS, MULTIAPPEND, LITERAL+, CONDSTORE, QRESYNC, BINARY, ENABLE, MOVE,
  SPECIAL-USE, CREATE-SPECIAL-USE, COMPRESS=DEFLATE, IDLE are offered; NAMESPACE is
  (("INBOX." ".")) (("user." ".")) (("" ".")).
* What APPEND does to messages (Debian defaults): 8-bit octets in the top-level header become
  "X" (munge8bit: same size, body untouched); bare LF and bare CR are stored as CRLF; a missing
  final newline is kept; NUL anywhere is refused ("NO Message contains NUL characters"); a
  header that does not parse (no header, "Name : value", a line without a colon, ...) is
  refused ("NO Message contains invalid header").  Flags and keywords ($Label1, custom words)
  are kept.
* Sessions: each imapd serving a client has a file proc_path/PID ("imap\thost\tuser\t..."), which
  `kill_sessions` reads to find a user's processes.  imapd -U 30 (Debian's) serves up to 30
  connections in turn: an idle imapd waiting for the next one has no proc file.  A SIGKILLed
  imapd leaves its proc file behind (only live pids of this instance count); master logs
  "signaled to death by signal 9" and a new connection right after is served at once.
* INTERNALDATE is kept as a time_t: the zone given at APPEND is lost; it is served in the
  process's zone.  We set TZ=UTC, so every INTERNALDATE reads "+0000" (as in the Dovecot rig).
* Changed from Debian's config, and why: paths (per instance); admins: cyrus (Debian's line is
  commented out: no one could create users); servername: localhost (= sasldb realm); TLS
  cert/key (imaps); master_bind_errors_fatal: yes; syslog_prefix: cyrus-NAME (to tell
  instances apart); sasl_auxprop_plugin: sasldb; only the imap and imaps services run (Debian's cyrus.conf
  also runs pop3d, nntpd, httpd, lmtpd, sieve, notifyd, from packages not unpacked here, and
  daily prune events).  Nothing that touches messages is changed.
"""
from __future__ import annotations

import os
import re
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

CYRUS_ROOT = Path(os.environ.get("MIGRATOR_CYRUS_ROOT", "/opt/migrator-test/cyrus"))
BIN = CYRUS_ROOT / "usr/lib/cyrus/bin"
LIBDIR = CYRUS_ROOT / "usr/lib/x86_64-linux-gnu"
DEBIAN_IMAPD_CONF = CYRUS_ROOT / "etc/imapd.conf"
INSTALLER = ".ci/servers/cyrus.sh"
SYSTEM_USER = "cyrus"
SYSTEM_GROUP = "mail"
SERVERNAME = "localhost"

# Debian imapd.conf keys whose values are replaced (paths, or what the tests need).
_REPLACED = (
    "configdirectory", "proc_path", "mboxname_lockpath", "partition-default", "partition-news",
    "newsspool", "sievedir", "lmtpsocket", "idlesocket", "notifysocket", "temp_path", "admins",
    "servername", "sasl_sasldb_path", "sasl_auxprop_plugin", "tls_server_cert", "tls_server_key",
    "master_bind_errors_fatal", "syslog_prefix",
)

# Runs as root inside `unshare -m`: a private /dev whose `log` is this instance's syslog socket.
_NS_SCRIPT = r"""set -e
RUN="$1"; shift
mkdir -p "$RUN/olddev"
mount --bind /dev "$RUN/olddev"
mount -t tmpfs -o mode=755,size=64k tmpfs /dev
for n in null zero full random urandom tty; do
  if [ -e "$RUN/olddev/$n" ]; then : > "/dev/$n"; mount --bind "$RUN/olddev/$n" "/dev/$n"; fi
done
if [ -d "$RUN/olddev/shm" ]; then mkdir /dev/shm; mount --rbind "$RUN/olddev/shm" /dev/shm; fi
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
ln -s "$RUN/log.sock" /dev/log
umount -l "$RUN/olddev"
exec "$@"
"""

_SEVERITY = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


class _SyslogSink:
    """Receives the instance's syslog datagrams and appends them, one per line, to a file."""

    def __init__(self, sock_path: Path, log_path: Path):
        try:
            sock_path.unlink()
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(sock_path))
        os.chmod(sock_path, 0o666)  # imapd runs as cyrus
        self.sock.settimeout(0.5)
        self.out = open(log_path, "ab", buffering=0)
        self._stop = False
        self.thread = threading.Thread(target=self._run, name=f"syslog-{sock_path}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            m = re.match(rb"<(\d+)>", data)
            if m:
                sev = _SEVERITY[int(m.group(1)) & 7]
                data = sev.encode() + b" " + data[m.end():]
            try:
                self.out.write(data.rstrip(b"\0\r\n") + b"\n")
            except (OSError, ValueError):
                break

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()
        self.out.close()


def _system_ids() -> tuple[int, int]:
    import grp
    import pwd
    try:
        return pwd.getpwnam(SYSTEM_USER).pw_uid, grp.getgrnam(SYSTEM_GROUP).gr_gid
    except KeyError:
        raise RuntimeError(f"system user {SYSTEM_USER!r} or group {SYSTEM_GROUP!r} missing: "
                           f"run {INSTALLER} as root") from None


def _check_installed() -> None:
    missing = [p for p in (BIN / "master", BIN / "imapd", BIN / "ctl_cyrusdb", DEBIAN_IMAPD_CONF)
               if not p.exists()]
    if missing:
        raise RuntimeError(f"Cyrus IMAP not unpacked in {CYRUS_ROOT} (missing {missing[0]}): "
                           f"run {INSTALLER} as root")
    for tool in ("saslpasswd2", "unshare"):
        _tool(tool)


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        raise RuntimeError(f"{name} not found: run {INSTALLER} as root")
    return path


def _debian_imapd_conf() -> list[str]:
    """Debian's imapd.conf minus comments, blank lines and the keys we replace."""
    out = []
    for line in DEBIAN_IMAPD_CONF.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key = s.split(":", 1)[0].strip()
        if key in _REPLACED:
            continue
        out.append(s)
    return out


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


class Cyrus:
    kind = "cyrus"
    separator = "."
    prefix = "INBOX."

    def __init__(self, root: str | Path | None = None, name: str = "cyrus"):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="mgr-", dir="/tmp"))
        self._own_root = root is None
        self.name = name
        self.dir = self.root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        # sockets, pid file and the syslog socket: a short path (sun_path is 108 bytes)
        self.run_dir = Path(tempfile.mkdtemp(prefix="mgc-", dir="/tmp"))
        self.config_dir = self.dir / "config"
        self.partition = self.dir / "spool"
        self.tmp_dir = self.dir / "tmp"
        self.imapd_conf = self.dir / "imapd.conf"
        self.cyrus_conf = self.dir / "cyrus.conf"
        self.log = self.dir / "cyrus.log"
        self.sasldb = self.config_dir / "sasldb2"
        self.pid_file = self.run_dir / "master.pid"
        self.proc_dir = self.run_dir / "proc"
        self.ca_file = str(self.dir / "ca.pem")
        self.cert_file = self.dir / "server.pem"
        self.key_file = self.dir / "server.key"
        self.admin_user = SYSTEM_USER  # `admins: cyrus`
        self.admin_password = secrets.token_hex(12)
        self.port = self.imaps_port = 0
        self.pop3_port = 0  # cyrus-pop3d is another package: no POP3
        self._users: dict[str, str] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ns: str | None = None
        self._sink: _SyslogSink | None = None
        self._started = False
        self._prepared = False
        self.start_seconds: float | None = None

    # ---------------------------------------------------------------- setup
    def _prepare(self) -> None:
        """Dirs, TLS, the admin's sasldb entry: once per instance (kept across restarts)."""
        if self._prepared:
            return
        _check_installed()
        uid, gid = _system_ids()
        self._makedirs(uid, gid)
        for d in (self.tmp_dir, self.proc_dir, self.run_dir / "lock", self.run_dir / "socket"):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, uid, gid)
        os.chmod(self.run_dir, 0o755)
        rig._ensure_traversable(self.dir)
        self._make_tls(uid, gid)
        self._saslpasswd(self.admin_user, self.admin_password)
        self._prepared = True

    def _makedirs(self, uid: int, gid: int) -> None:
        """What Debian's `cyrus makedirs` (run by cyrus-common's postinst) does, for our paths.

        (That script ignores its config-file argument and reads /etc/imapd.conf.)"""
        hashdirs = "abcdefghijklmnopqrstuvwxyz"
        made: list[tuple[Path, int]] = [(self.config_dir, 0o750)]
        for sub in ("db", "proc", "socket", "log", "msg", "user", "quota", "lock"):
            made.append((self.config_dir / sub, 0o750 if sub == "socket" else 0o700))
        for sub in ("user", "quota", "lock"):
            made += [(self.config_dir / sub / h, 0o755) for h in hashdirs]
        for part in (self.partition, self.dir / "news"):  # hashimapspool: true
            made += [(part, 0o750), (part / "stage.", 0o755)]
            made += [(part / h, 0o755) for h in hashdirs]
        made += [(self.dir / "sieve", 0o755)] + [(self.dir / "sieve" / h, 0o755) for h in hashdirs]
        for d, mode in made:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)
            os.chown(d, uid, gid)
        deny = self.config_dir / "user_deny.db"  # postinst: an empty user_deny database
        deny.touch()
        os.chmod(deny, 0o600)
        os.chown(deny, uid, gid)

    def _make_tls(self, uid: int, gid: int) -> None:
        import trustme
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(self.ca_file)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert_file), append=True)
        os.chown(self.key_file, uid, gid)
        os.chmod(self.key_file, 0o600)

    def _saslpasswd(self, user: str, password: str) -> None:
        # As the cyrus user: the db stays readable by imapd.  -p: password on stdin.
        res = subprocess.run(
            [_tool("saslpasswd2"), "-p", "-c", "-f", str(self.sasldb),
             "-u", SERVERNAME, user],
            input=password.encode(), capture_output=True, user=SYSTEM_USER, group=SYSTEM_GROUP,
            timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"saslpasswd2 {user} failed ({res.returncode}): "
                               f"{res.stderr.decode(errors='replace').strip()}")

    def _imapd_conf(self) -> str:
        lines = _debian_imapd_conf()
        ours = {
            "configdirectory": self.config_dir,
            "partition-default": self.partition,
            "partition-news": self.dir / "news",
            "newsspool": self.dir / "news",
            "sievedir": self.dir / "sieve",
            "proc_path": self.proc_dir,
            "mboxname_lockpath": self.run_dir / "lock",
            "lmtpsocket": self.run_dir / "socket/lmtp",
            "idlesocket": self.run_dir / "socket/idle",
            "notifysocket": self.run_dir / "socket/notify",
            "temp_path": self.tmp_dir,
            "admins": self.admin_user,
            "servername": SERVERNAME,
            "sasl_sasldb_path": self.sasldb,
            "sasl_auxprop_plugin": "sasldb",
            "tls_server_cert": self.cert_file,
            "tls_server_key": self.key_file,
            "master_bind_errors_fatal": "yes",
            "syslog_prefix": f"cyrus-{self.name}",
        }
        return ("# generated by tests/servers/cyrus.py: Debian's imapd.conf, paths moved\n"
                + "\n".join(lines) + "\n# --- test instance\n"
                + "".join(f"{k}: {v}\n" for k, v in ours.items()))

    def _cyrus_conf(self) -> str:
        b, c = BIN, f"-C {self.imapd_conf}"
        return f"""# generated by tests/servers/cyrus.py -- throwaway test instance {self.name}
START {{
  recover cmd="{b}/ctl_cyrusdb {c} -r"
}}
SERVICES {{
  imap  cmd="{b}/imapd {c} -U 30" listen="127.0.0.1:{self.port}" prefork=0 maxchild=100
  imaps cmd="{b}/imapd {c} -s -U 30" listen="127.0.0.1:{self.imaps_port}" prefork=0 maxchild=100
}}
EVENTS {{
  checkpoint cmd="{b}/ctl_cyrusdb {c} -c" period=30
}}
"""

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> Cyrus:
        t0 = time.monotonic()
        last_err = None
        self._prepare()
        for _attempt in range(3):
            self.port, self.imaps_port = rig.free_port(), rig.free_port()
            if self.port == self.imaps_port:
                continue
            try:
                self._launch(timeout)
                self.start_seconds = time.monotonic() - t0
                return self
            except Exception as e:  # noqa: BLE001 (e.g. a port taken meanwhile)
                last_err = str(e)
                self.stop()
        raise RuntimeError(f"Cyrus {self.name} failed to start: {last_err}\n"
                           f"--- last lines of {self.log} ---\n{self.log_tail()}")

    def _launch(self, timeout: float) -> None:
        self.imapd_conf.write_text(self._imapd_conf())
        self.cyrus_conf.write_text(self._cyrus_conf())
        ns_script = self.run_dir / "ns.sh"
        ns_script.write_text(_NS_SCRIPT)
        if self._sink is None:
            self._sink = _SyslogSink(self.run_dir / "log.sock", self.log)
        self._stderr_path = self.dir / "master.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CYRUS_")}
        env.update(LD_LIBRARY_PATH=str(LIBDIR), TZ="UTC",
                   PATH=f"{env.get('PATH', '')}:/usr/sbin:/usr/bin:/sbin:/bin")  # mount, umount
        with open(self._stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                [_tool("unshare"), "-m", "--propagation", "private",
                 "sh", str(ns_script), str(self.run_dir),
                 str(BIN / "master"), "-C", str(self.imapd_conf), "-M", str(self.cyrus_conf),
                 "-p", str(self.pid_file), "-D"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, cwd=str(self.dir),
                start_new_session=True)
        self._started = True
        rig._live.add(self)
        self._wait_ready(timeout)
        ns = _mount_ns(self._proc.pid)
        if ns is None or ns == _mount_ns(os.getpid()):
            raise RuntimeError(f"master {self._proc.pid} is not in its own mount namespace ({ns})")
        self._ns = ns

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        err = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                stderr = self._stderr_path.read_text(errors="replace").strip()[-2000:]
                raise RuntimeError(f"cyrus master exited with {self._proc.returncode}: {stderr}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(10)
                    greeting = s.recv(1024)
                    if greeting.startswith(b"* OK"):
                        s.sendall(b"x LOGOUT\r\n")
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
        """Every live process of this instance: those in its private mount namespace."""
        if not self._ns or self._ns == _mount_ns(os.getpid()):
            return []
        conf = str(self.imapd_conf).encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or _mount_ns(int(entry)) != self._ns:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if conf in args:  # every Cyrus process here runs with -C CONF (and keeps its argv)
                out.append(int(entry))
        return out

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to master (it takes its children along), then SIGKILL whatever is left."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for _ in range(100):
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self._ns = None  # a dead namespace's inode number can be reused by another one
        self._started = False
        rig._live.discard(self)

    def restart(self, timeout: float = 30.0) -> Cyrus:
        """Stop everything, start again on the same ports (accounts and mail are kept)."""
        self.stop()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                self._launch(timeout)
                return self
            except Exception as e:  # noqa: BLE001 (port briefly unavailable)
                last = str(e)
                self.stop()
                time.sleep(0.2)
        raise RuntimeError(f"Cyrus {self.name} failed to restart: {last}\n{self.log_tail()}")

    def cleanup(self) -> None:
        self.stop()
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for path in (self.log, self.dir / "master.stderr"):
            try:
                lines = path.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                continue
            if lines:
                parts.append("\n".join(lines))
        return "\n".join(parts) or "(no log)"

    # ------------------------------------------------------------- sessions
    def sessions(self) -> dict[int, str]:
        """{pid: user} of the imapd processes serving a client (from proc_path/PID)."""
        out = {}
        try:
            entries = os.listdir(self.proc_dir)
        except OSError:
            return out
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                fields = (self.proc_dir / entry).read_text(errors="replace").split("\t")
            except OSError:
                continue
            pid = int(entry)
            if not os.path.exists(f"/proc/{pid}") or _mount_ns(pid) != self._ns:
                continue  # a stale file (a killed process leaves it behind)
            out[pid] = fields[2].strip() if len(fields) > 2 else ""
        return out

    def session_pids(self, user: str | None = None) -> list[int]:
        return [pid for pid, u in self.sessions().items() if user is None or u == user]

    def kill_sessions(self, user: str | None = None, sig: int = signal.SIGKILL) -> int:
        """SIGKILL (like a crash) the imapd processes serving clients: all, or USER's.

        Returns the number of processes signalled."""
        pids = self.session_pids(user)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)

    # ----------------------------------------------------------------- users
    def admin_connect(self, **kw):
        from imapclient import IMAPClient
        kw.setdefault("timeout", 30)
        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, use_uid=True, **kw)
        c.normalise_times = False
        c.login(self.admin_user, self.admin_password)
        return c

    def new_user(self, prefix: str = "u", **kw) -> rig.Account:
        """A user with a usable INBOX.  Extra keywords (quota=...) are not supported."""
        if any(v is not None for v in kw.values()):
            raise NotImplementedError(f"Cyrus.new_user does not support {sorted(kw)}")
        with rig._counter_lock:
            n = next(rig._user_counter)
        # unixhierarchysep: no -> no "." in user names; worker ids are like "gw0".
        user = f"{prefix}{rig.worker_id()}n{n}{secrets.token_hex(2)}".replace(".", "_").lower()
        password = secrets.token_urlsafe(12)
        with self._lock:
            self._saslpasswd(user, password)
            c = self.admin_connect()
            try:
                c.create_folder(f"user{self.separator}{user}")
            finally:
                c.logout()
            self._users[user] = password
        return self.account(user)

    def account(self, user: str) -> rig.Account:
        return rig.Account(port=self.port, imaps_port=self.imaps_port, pop3_port=self.pop3_port,
                           user=user, password=self._users[user], separator=self.separator,
                           prefix=self.prefix, server=self)
