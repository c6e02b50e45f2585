r"""Test rig: real, throwaway Dovecot 2.3 instances on 127.0.0.1 plus helpers.

Each instance has its own config, base_dir (short, under /tmp), state dir,
log file, passwd-files and free ports (imap, imaps, pop3).  Nothing from
/etc/dovecot is included.

Dovecot facts found (and relied upon) while building this rig (2.3.19.1):

* The auth process runs as the `dovecot` user (default_internal_user), so
  passwd-files must be readable by it (we use root:dovecot 0640).
* passwd-file IS re-read when it changes, but (db-passwd-file.c,
  passwd_file_sync) at most once per second per file: `if (last_sync_time ==
  ioloop_time) return;`, then it compares st_mtime (whole seconds) and size.
  With one shared file a user added right after another user's login in the
  same second fails with AUTHENTICATIONFAILED (seen in practice under
  pytest).  So the rig uses ONE passwd-file PER USER
  (`args = DIR/users/%u`): a new path is opened on first lookup, so new users
  work at once.  `set_quota` rewrites the user's file with a strictly newer
  mtime and then waits for the next whole second before returning.
* The quota rule is read from userdb at login, so `set_quota` only affects
  sessions opened afterwards.
* imapclient's `multiappend` does NOT check the tagged response: a NO
  (e.g. [OVERQUOTA]) is returned silently.  `seed` checks it and raises.
* Dovecot with Maildir++ (the default maildir layout) stores folders as
  '.'-separated directories whatever the IMAP separator is; on the '/'
  instance a folder name containing '.' is therefore refused
  ("[CANNOT] Character not allowed in mailbox name: '.'"), and on the '.'
  instance '/' is refused too ("Name must not have '/' characters").
  Creating "x/y" leaves its parent "x" as \Noselect (snapshot skips it).
  See test_maildir_naming_limits.
* Failed logins are delayed by auth_failure_delay (2 s by default); the rig
  sets it to 0 to keep tests fast.
* Master user: a `master = yes` passwd-file passdb with `result_success =
  continue` (== `pass = yes`) before the normal passdb; log in as
  `USER*admin` with the master password.
* `dovecot -c CONF` daemonizes but keeps the stdio it was given: starting it
  with subprocess pipes (capture_output=True) hangs until Dovecot exits, and
  the daemon's master, re-parented to init, lingers as a zombie after stop
  (visible in `pgrep -a dovecot`).  The rig runs `dovecot -F` as a child
  process instead and reaps it.
* Dovecot only advertises SPECIAL-USE when some mailbox has `special_use`
  configured: the dot instance (special_use=False) does not advertise it.
* Maildir keeps INTERNALDATE as the file mtime: the timezone given at APPEND
  is lost, dates come back in the server's zone.  We force TZ=UTC
  (`import_environment = TZ=UTC`), so every INTERNALDATE reads "+0000".
* Maildir++ quota: once a user has had a limit it is stored in `maildirsize`,
  and with no quota rule Dovecot falls back to those stored limits.  So
  `set_quota(acc, None)` writes `*:storage=0` (= unlimited) instead.
* Finding an instance's processes: /proc/PID/environ does not work (Dovecot's
  proctitle code overwrites the environment block).  We set a unique
  `instance_name`, so every child is titled "dovecot-mig-TOKEN/SERVICE ...";
  the master is "dovecot -c CONF".  With verbose_proctitle = yes an imap
  session is "dovecot-mig-TOKEN/imap [USER 127.0.0.1 ...]".  `stop()` uses
  this to SIGKILL leftover sessions (SIGTERM to the master alone leaves busy
  imap sessions running for a while, re-parented to init).
* Dovecot serves messages stored with bare LF as CRLF; a NUL byte comes
  back as 0x80; a single trailing bare CR is dropped on APPEND.
"""
from __future__ import annotations

import atexit
import grp
import hashlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from imapclient import IMAPClient
from imapclient.datetime_util import datetime_to_INTERNALDATE

REPO_ROOT = Path(__file__).resolve().parent.parent
MAIL_USER = "migtest"
MASTER_SEPARATOR = "*"
SPECIAL_USE = {
    "Sent": r"\Sent",
    "Drafts": r"\Drafts",
    "Trash": r"\Trash",
    "Junk": r"\Junk",
    "Archive": r"\Archive",
}

Message = bytes | tuple  # raw bytes or (raw, flags, internaldate)

_user_counter = itertools.count(1)
_live: set[Dovecot] = set()  # started instances, stopped at interpreter exit


@atexit.register
def _stop_all() -> None:
    for d in list(_live):
        try:
            d.stop()
        except Exception:  # noqa: BLE001
            pass
_counter_lock = threading.Lock()


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_mail_user() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell",
             "/usr/sbin/nologin", MAIL_USER],
            check=False, capture_output=True,
        )
        pw = pwd.getpwnam(MAIL_USER)  # raises if useradd failed (e.g. race lost AND failed)
    return pw.pw_uid, pw.pw_gid


def _ensure_traversable(path: Path) -> None:
    """Mail processes run as migtest: every ancestor needs o+x."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & 0o001:
            os.chmod(p, mode | 0o001)


def _auth_readable(path: Path) -> None:
    """The auth process runs as default_internal_user (dovecot), not root."""
    try:
        gid = grp.getgrnam("dovecot").gr_gid
        os.chown(path, 0, gid)
        os.chmod(path, 0o640)
    except KeyError:
        os.chmod(path, 0o644)


def _find_dovecot() -> str:
    exe = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
    if not exe:
        raise RuntimeError("dovecot binary not found (apt-get install dovecot-imapd dovecot-pop3d)")
    return exe


def _find_doveadm() -> str:
    return shutil.which("doveadm") or "/usr/bin/doveadm"


@dataclass
class Account:
    port: int
    imaps_port: int
    pop3_port: int
    user: str
    password: str
    separator: str
    prefix: str
    server: Dovecot = field(repr=False, compare=False)  # the instance that holds it (any kind)
    host: str = "127.0.0.1"

    @property
    def dovecot(self) -> Dovecot:
        """Older name of `server`, from when Dovecot was the only kind."""
        return self.server

    @property
    def kind(self) -> str:
        return getattr(self.server, "kind", "dovecot")

    @property
    def url(self) -> str:
        return f"imap://{self.user}@{self.host}:{self.port}"

    @property
    def imaps_url(self) -> str:
        return f"imaps://{self.user}@{self.host}:{self.imaps_port}"

    @property
    def pop3_url(self) -> str:
        return f"pop3://{self.user}@{self.host}:{self.pop3_port}"

    @property
    def ca_file(self) -> str:
        return self.server.ca_file

    def env(self, role: str) -> dict:
        if role not in ("src", "dst"):
            raise ValueError("role must be 'src' or 'dst'")
        return {f"MIGRATOR_{role.upper()}_PASSWORD": self.password}

    def folder_name(self, components: Sequence[str]) -> str:
        return folder_name(self, components)

    def connect(self, ssl_: bool = False, **kw) -> IMAPClient:
        return connect(self, ssl_=ssl_, **kw)


class Dovecot:
    kind = "dovecot"

    def __init__(self, root: str | Path | None = None, name: str = "dovecot",
                 separator: str = "/", prefix: str = "", special_use: bool = False, compress: bool = True):
        if separator not in ("/", "."):
            raise ValueError("separator must be '/' or '.'")
        if prefix and not prefix.endswith(separator):
            raise ValueError("prefix must end with the separator")
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="mgr-", dir="/tmp"))
        self._own_root = root is None
        self.name = name
        self.separator = separator
        self.prefix = prefix
        self.special_use = special_use
        self.compress = compress  # offer COMPRESS=DEFLATE (imap_zlib)
        self.uid, self.gid = ensure_mail_user()
        self.dir = self.root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base_dir = Path(tempfile.mkdtemp(prefix="mgd-", dir="/tmp"))
        self.state_dir = self.dir / "state"
        self.mail_dir = self.dir / "mail"
        self.conf = self.dir / "dovecot.conf"
        self.log = self.dir / "dovecot.log"
        self.users_dir = self.dir / "users"  # one passwd-file per user, see top
        self.master_passwd = self.dir / "master-passwd"
        self.ca_file = str(self.dir / "ca.pem")
        self.cert_file = self.dir / "server.pem"
        self.key_file = self.dir / "server.key"
        self.master_user = "admin"
        self.master_password = secrets.token_hex(12)
        self.token = f"{name}-{secrets.token_hex(6)}"
        self.port = self.imaps_port = self.pop3_port = 0
        self._users: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._last_mtime = 0.0
        self._started = False
        self._proc: subprocess.Popen | None = None
        for d in (self.state_dir, self.mail_dir, self.users_dir):
            d.mkdir(parents=True, exist_ok=True)
        _ensure_traversable(self.dir)
        os.chown(self.mail_dir, self.uid, self.gid)
        self._make_tls()
        self.master_passwd.write_text(f"{self.master_user}:{{PLAIN}}{self.master_password}\n")
        _auth_readable(self.master_passwd)

    # ---------------------------------------------------------------- config
    def _make_tls(self) -> None:
        import trustme
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(self.ca_file)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert_file), append=True)
        os.chmod(self.key_file, 0o600)

    def _config(self) -> str:
        mailboxes = ""
        if self.special_use:
            for mbox, use in SPECIAL_USE.items():
                mailboxes += f"  mailbox {mbox} {{\n    special_use = {use}\n    auto = no\n  }}\n"
        dh = "/usr/share/dovecot/dh.pem"
        ssl_dh = f"ssl_dh = <{dh}\n" if os.path.exists(dh) else ""
        return f"""# generated by tests/rig.py -- throwaway test instance {self.name}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
instance_name = mig-{self.token}
log_path = {self.log}
info_log_path = {self.log}
debug_log_path = {self.log}
protocols = imap pop3
listen = 127.0.0.1
import_environment = TZ=UTC
verbose_proctitle = yes
shutdown_clients = yes
first_valid_uid = 1
first_valid_gid = 1
mail_uid = {self.uid}
mail_gid = {self.gid}
mail_location = maildir:{self.mail_dir}/%u
mail_fsync = never
mail_max_userip_connections = 100
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_master_user_separator = {MASTER_SEPARATOR}
# zlib: for imap_zlib (COMPRESS=DEFLATE, RFC 4978); mail is stored as is (no zlib_save).
mail_plugins = $mail_plugins quota zlib
ssl = yes
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
{ssl_dh}
namespace inbox {{
  inbox = yes
  separator = {self.separator}
  prefix = {self.prefix}
{mailboxes}}}

passdb {{
  driver = passwd-file
  master = yes
  args = {self.master_passwd}
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = {self.users_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = {self.users_dir}/%u
}}

plugin {{
  quota = maildir:User quota
}}

protocol imap {{
  mail_plugins = $mail_plugins imap_quota{" imap_zlib" if self.compress else ""}
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap {{
  process_limit = 1024
}}
"""

    def _write_passwd(self, user: str) -> float:
        """(Re)write USER's passwd-file atomically with a strictly newer mtime."""
        info = self._users[user]
        quota = info.get("quota")
        if quota is None and info.get("had_quota"):
            quota = "0"  # explicit unlimited; see top: maildirsize keeps old limits
        extra = f"userdb_quota_rule=*:storage={quota}" if quota else ""
        if info.get("max_mail_size"):  # per-message size limit: APPEND answers NO [LIMIT]
            extra = f"{extra} userdb_quota_max_mail_size={info['max_mail_size']}".strip()
        home = self.mail_dir / user
        # user:password:uid:gid:gecos:home:shell:extra_fields
        line = f"{user}:{{PLAIN}}{info['password']}::::{home}::{extra}\n"
        path = self.users_dir / user
        tmp = self.users_dir / f".{user}.tmp"
        tmp.write_text(line)
        _auth_readable(tmp)
        mtime = max(time.time(), self._last_mtime + 1.0)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
        self._last_mtime = mtime
        return time.time()

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> Dovecot:
        last_err = None
        for attempt in range(3):  # free ports can be raced away: retry with new ones
            if attempt or not self.port:
                self.port, self.imaps_port, self.pop3_port = free_port(), free_port(), free_port()
            try:
                self._launch(timeout)
                return self
            except Exception as e:  # noqa: BLE001
                last_err = str(e)
                self.stop()
        raise RuntimeError(f"Dovecot {self.name} failed to start: {last_err}\n"
                           f"--- last lines of {self.log} ---\n{self.log_tail()}")

    def _launch(self, timeout: float) -> None:
        """Run `dovecot -F -c CONF` as our child (so we reap it: no zombies)."""
        self.conf.write_text(self._config())
        self._stderr_path = self.dir / "master.stderr"
        with open(self._stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                [_find_dovecot(), "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True)  # no terminal signals from the test runner
        self._started = True
        _live.add(self)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        err = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                stderr = self._stderr_path.read_text(errors="replace").strip()[-2000:]
                raise RuntimeError(f"dovecot exited with {self._proc.returncode}: {stderr}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    greeting = s.recv(1024)
                    if greeting.startswith(b"* OK"):
                        return
                    err = f"unexpected greeting {greeting!r}"
            except OSError as e:
                err = repr(e)
            time.sleep(0.05)
        raise RuntimeError(f"imap port {self.port} not ready after {timeout}s: {err}")

    def master_pid(self) -> int | None:
        proc = getattr(self, "_proc", None)
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    def pids(self) -> list[int]:
        """All live processes of this instance, found by process title.

        /proc/PID/environ is useless here (Dovecot's proctitle code overwrites
        the environment block), so we use: master = "dovecot -c CONF", every
        child = "dovecot-mig-TOKEN/SERVICE ..." (from instance_name)."""
        child_prefix = f"dovecot-mig-{self.token}/".encode()
        conf = str(self.conf).encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            args = cmd.split(b"\0")
            if cmd.startswith(child_prefix) or (
                    args and args[0].endswith(b"dovecot") and conf in args):
                out.append(int(entry))
        return out

    def _kill_leftovers(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master (SIGTERM, then SIGKILL) AND kill leftover sessions."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # sessions busy at SIGTERM may outlive the master: kill them all
        for _ in range(100):
            if not self.pids():
                break
            self._kill_leftovers()
            time.sleep(0.05)
        self._started = False
        _live.discard(self)

    def restart(self, timeout: float = 20.0) -> Dovecot:
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
        raise RuntimeError(f"Dovecot {self.name} failed to restart: {last}\n{self.log_tail()}")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([_find_doveadm(), "-c", str(self.conf), *args],
                              capture_output=True, text=True, check=check)

    def session_pids(self, user: str | None = None) -> list[int]:
        """imap/pop3 session processes (not login processes); by user if given."""
        out = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            # verbose_proctitle + instance_name: "dovecot-mig-TOKEN/imap [USER 127.0.0.1 ...]"
            service = title.split(" ")[0].rpartition("/")[2]
            if service not in ("imap", "pop3"):
                continue
            if user is not None and f"[{user} " not in title:
                continue
            out.append(pid)
        return out

    def kill_sessions(self, user: str | None = None, sig: int = signal.SIGKILL) -> int:
        """Drop IMAP/POP3 sessions server-side (default: SIGKILL, like a crash).

        Returns the number of processes signalled."""
        pids = self.session_pids(user)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)

    # ----------------------------------------------------------------- users
    def new_user(self, prefix: str = "u", quota: str | None = None,
                 max_mail_size: str | None = None) -> Account:
        with _counter_lock:
            n = next(_user_counter)
        user = f"{prefix}{worker_id()}n{n}{secrets.token_hex(2)}"
        password = secrets.token_urlsafe(12).replace(":", "x")
        with self._lock:
            self._users[user] = {"password": password, "quota": quota, "had_quota": bool(quota),
                                 "max_mail_size": max_mail_size}
            self._write_passwd(user)
        return Account(port=self.port, imaps_port=self.imaps_port, pop3_port=self.pop3_port,
                       user=user, password=password, separator=self.separator,
                       prefix=self.prefix, server=self)

    def set_quota(self, account: Account, quota: str | None) -> None:
        with self._lock:
            self._users[account.user]["quota"] = quota
            self._users[account.user]["had_quota"] = True
            written = self._write_passwd(account.user)
        # Dovecot stats a passwd-file at most once per second: make sure the
        # next login happens in a later second than the write.
        time.sleep(max(0.0, int(written) + 1.02 - time.time()))

    def account(self, user: str) -> Account:
        info = self._users[user]
        return Account(port=self.port, imaps_port=self.imaps_port, pop3_port=self.pop3_port,
                       user=user, password=info["password"], separator=self.separator,
                       prefix=self.prefix, server=self)


def set_quota(account: Account, quota: str | None) -> None:
    account.dovecot.set_quota(account, quota)


# -------------------------------------------------------------- IMAP helpers
def connect(account: Account, ssl_: bool = False, master: bool = False, **kw) -> IMAPClient:
    """Logged-in IMAPClient (normalise_times=False: tz-aware INTERNALDATEs)."""
    kw.setdefault("timeout", 30)
    if ssl_:
        ctx = ssl.create_default_context(cafile=account.ca_file)
        c = IMAPClient(account.host, port=account.imaps_port, ssl=True, ssl_context=ctx,
                       use_uid=True, **kw)
    else:
        c = IMAPClient(account.host, port=account.port, ssl=False, use_uid=True, **kw)
    c.normalise_times = False
    if master:
        c.login(f"{account.user}{MASTER_SEPARATOR}{account.dovecot.master_user}",
                account.dovecot.master_password)
    else:
        c.login(account.user, account.password)
    return c


def folder_name(account: Account, components: Sequence[str]) -> str:
    if isinstance(components, str):
        components = [components]
    components = list(components)
    if len(components) == 1 and components[0].upper() == "INBOX":
        return "INBOX"
    return account.prefix + account.separator.join(components)


def folder_components(account: Account, name: str) -> tuple:
    if name.upper() == "INBOX":
        return ("INBOX",)
    if account.prefix and name.startswith(account.prefix):
        name = name[len(account.prefix):]
    return tuple(name.split(account.separator))


def create_folder(account: Account, components: Sequence[str], subscribe: bool = False,
                  client: IMAPClient | None = None) -> str:
    name = folder_name(account, components)
    c = client or connect(account)
    try:
        if name != "INBOX" and not c.folder_exists(name):
            c.create_folder(name)
        if subscribe:
            c.subscribe_folder(name)
    finally:
        if client is None:
            c.logout()
    return name


def _norm_message(m: Message) -> dict:
    if isinstance(m, (bytes, bytearray)):
        return {"msg": bytes(m)}
    raw, *rest = m
    d = {"msg": bytes(raw)}
    if len(rest) >= 1 and rest[0]:
        d["flags"] = tuple(rest[0])
    if len(rest) >= 2 and rest[1] is not None:
        if not isinstance(rest[1], datetime) or rest[1].tzinfo is None:
            raise ValueError("internaldate must be a timezone-aware datetime")
        d["date"] = rest[1]
    return d


def seed(account: Account, folder: Sequence[str], messages: Iterable[Message],
         batch_bytes: int = 8 << 20, batch_count: int = 200) -> None:
    """Create folder if missing and APPEND the messages byte for byte (MULTIAPPEND).

    Raises RuntimeError if the server answers NO (e.g. [OVERQUOTA])."""
    c = connect(account)
    try:
        name = create_folder(account, folder, client=c)
        batch, size = [], 0

        def flush():
            nonlocal batch, size
            if not batch:
                return
            typ, data = c.multiappend(name, batch)
            if typ != "OK":
                raise RuntimeError(f"APPEND to {name!r} failed: {typ} {data!r}")
            batch, size = [], 0

        for m in messages:
            d = _norm_message(m)
            batch.append(d)
            size += len(d["msg"])
            if size >= batch_bytes or len(batch) >= batch_count:
                flush()
        flush()
    finally:
        try:
            c.logout()
        except Exception:  # noqa: BLE001
            pass


def append_each(account: Account, folder: Sequence[str], messages: Iterable[Message]) -> list[str | None]:
    """Create folder if missing and APPEND the messages one by one (for servers without
    MULTIAPPEND, and to seed what a server accepts of the real-world corpus). Returns, per
    message, None if it was stored, else the server's refusal."""
    c = connect(account)
    out: list[str | None] = []
    try:
        name = create_folder(account, folder, client=c)
        for m in messages:
            d = _norm_message(m)
            try:
                c.append(name, d["msg"], flags=d.get("flags", ()), msg_time=d.get("date"))
                out.append(None)
            except Exception as e:  # noqa: BLE001  (NO/BAD: refused; the session stays usable)
                out.append(str(e))
    finally:
        try:
            c.logout()
        except Exception:  # noqa: BLE001
            pass
    return out


def body_sha(body: bytes) -> str:
    """SHA-256 of a message's bytes with NUL hashed as 0x80: Dovecot serves a stored NUL as 0x80 (an
    IMAP literal cannot carry it), Cyrus and Courier serve it as NUL (in a literal8), an archive
    keeps it, so the same stored bytes read differently."""
    return hashlib.sha256(body.replace(b"\x00", b"\x80")).hexdigest()


def messages_by_uid(account: Account) -> dict[tuple, dict[int, tuple]]:
    """{components: {uid: (body_sha(BODY[]), sorted flags w/o \\Recent, INTERNALDATE as a UTC instant)}}."""
    c = connect(account)
    try:
        out = {}
        for name in _list(c, True):
            out[folder_components(account, name)] = {
                uid: (body_sha(d[b"BODY[]"]), tuple(_flags(d[b"FLAGS"])),
                      d[b"INTERNALDATE"].astimezone(UTC).isoformat())
                for uid, d in _fetch_all(c, name).items()}
        return out
    finally:
        c.logout()


def list_folders(account: Account, selectable_only: bool = True) -> list[tuple]:
    c = connect(account)
    try:
        return [folder_components(account, n) for n in _list(c, selectable_only)]
    finally:
        c.logout()


def _list(c: IMAPClient, selectable_only: bool) -> list[str]:
    out = []
    for flags, _delim, name in c.list_folders("", "*"):
        fl = {f.lower() if isinstance(f, str) else f.decode().lower() for f in flags}
        if selectable_only and ({"\\noselect", "\\nonexistent"} & fl):
            continue
        out.append(name)
    return out


def _flags(flags) -> list[str]:
    fs = []
    for f in flags:
        f = f.decode() if isinstance(f, bytes) else f
        if f.lower() != "\\recent":
            fs.append(f)
    return sorted(fs)


def _fetch_all(c: IMAPClient, name: str):
    info = c.select_folder(name, readonly=True)  # EXAMINE
    if not info.get(b"EXISTS"):
        return {}
    # imapclient 3.0's fetch() cannot take "1:*" (it int()s the message set
    # afterwards), so SEARCH for UIDs and fetch in chunks.
    uids = sorted(c.search("ALL"))
    out = {}
    for i in range(0, len(uids), 500):
        chunk = uids[i:i + 500]
        out.update(c.fetch(chunk, ["FLAGS", "INTERNALDATE"]))
        for uid, body in _raw_bodies(c, chunk).items():
            out[uid][b"BODY[]"] = body
    return out


_UID_IN_HEAD = re.compile(rb"UID (\d+)")


def _raw_bodies(c: IMAPClient, uids: list[int]) -> dict[int, bytes]:
    """BODY[] read with imaplib itself: a server may send it as a literal8 (~{n}, Cyrus and
    Courier for a message holding NUL), which imapclient's parser returns as the text '~{n}'."""
    typ, data = c._imap.uid("FETCH", ",".join(map(str, uids)), "(UID BODY.PEEK[])")
    if typ != "OK":
        raise RuntimeError(f"UID FETCH BODY.PEEK[] failed: {data!r}")
    out = {}
    for item in data:
        if isinstance(item, tuple):
            m = _UID_IN_HEAD.search(item[0])
            if m:
                out[int(m.group(1))] = item[1]
    return out


def snapshot(account: Account) -> dict:
    """{components: sorted [(sha256(BODY[]), sorted flags w/o \\Recent, INTERNALDATE str)]}."""
    c = connect(account)
    try:
        snap = {}
        for name in _list(c, True):
            items = []
            for _uid, d in _fetch_all(c, name).items():
                body = d[b"BODY[]"]
                items.append((hashlib.sha256(body).hexdigest(), _flags(d[b"FLAGS"]),
                              datetime_to_INTERNALDATE(d[b"INTERNALDATE"])))
            snap[folder_components(account, name)] = sorted(items)
        return snap
    finally:
        c.logout()


def fetch_bodies(account: Account, components: Sequence[str]) -> list[bytes]:
    """BODY[] of every message in the folder, in UID order."""
    c = connect(account)
    try:
        data = _fetch_all(c, folder_name(account, components))
        return [data[uid][b"BODY[]"] for uid in sorted(data)]
    finally:
        c.logout()


def corpus_dir() -> Path:
    """MIGRATOR_CORPUS; else shared/corpus beside the repository; else beside the local
    repository this checkout was cloned from (a CI trial in `git clone . /tmp/ci-try`)."""
    env = os.environ.get("MIGRATOR_CORPUS")
    if env:
        return Path(env)
    beside = REPO_ROOT.parent / "shared" / "corpus"
    if beside.is_dir():
        return beside
    try:
        origin = subprocess.run(["git", "-C", str(REPO_ROOT), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin.startswith("/"):  # a local path, not a URL
        cloned_from = Path(origin).resolve().parent / "shared" / "corpus"
        if cloned_from.is_dir():
            return cloned_from
    return beside


def corpus_messages() -> list[tuple[str, bytes]]:
    """[(path relative to the corpus dir, raw bytes)] for corpus/*/*.eml, sorted."""
    d = corpus_dir()
    if not d.is_dir():
        raise FileNotFoundError(f"corpus dir {d} not found (set MIGRATOR_CORPUS)")
    return [(str(p.relative_to(d)), p.read_bytes()) for p in sorted(d.glob("*/*.eml"))]
