"""A stand-in for Gmail's IMAP server: hoodiecrow-imap (npm, a third-party IMAP test server) with
its X-GM-EXT-1 plugin, started by tests/gmail_standin.js on 127.0.0.1.

Gmail cannot be reached from here. The stand-in keeps what matters to a migration: every message
has an X-GM-MSGID and X-GM-LABELS; `[Gmail]/All Mail` (\\All) holds every message once; each label
folder shows the messages carrying that label (the same X-GM-MSGID in several folders); a message
with no label is only in All Mail (archived); STORE +X-GM-LABELS makes a message show in that
label's folder; an APPEND of bytes it holds already stores nothing new, as Gmail keeps one copy per
account (into a folder showing it: OK with the held copy's UID in APPENDUID, logged as `* DROPPED`;
into another folder: the copy gains that label). Every command a client sends is logged, so a test
counts the bodies fetched and the APPENDs.

Where it differs from Gmail: LOGIN as `testuser`/`testpass` only, no TLS, no XOAUTH2 here, no
bandwidth caps, duplicates told by identical bytes (Gmail does not document its rule; it is said to
use the Message-ID), and FLAGS do not follow the \\Starred label (the source store derives \\Flagged from
the label, which real Gmail also shows as the flag).

hoodiecrow is installed by .ci/servers/hoodiecrow.sh (NODE_PATH below); a missing install fails
the test, never skips it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests import rig

NODE_PATH = "/opt/migrator-test/hoodiecrow/node_modules"
SCRIPT = Path(__file__).with_name("gmail_standin.js")
USER, PASSWORD = "testuser", "testpass"
ALL_MAIL = "[Gmail]/All Mail"
# Gmail's system folders and the label (or special-use) each shows
SYSTEM = {"INBOX": "\\Inbox", "[Gmail]/Sent Mail": "\\Sent", "[Gmail]/Starred": "\\Starred",
          "[Gmail]/Important": "\\Important"}
SPECIAL = {"[Gmail]/All Mail": "\\All", "[Gmail]/Sent Mail": "\\Sent", "[Gmail]/Starred": "\\Flagged",
           "[Gmail]/Important": "\\Important"}


@dataclass
class GmailMessage:
    raw: bytes
    labels: tuple[str, ...] = ()  # user labels ("Work") and system ones ("\\Inbox", "\\Starred")
    flags: tuple[str, ...] = ()
    date: str = "14-Sep-2023 21:22:28 +0200"
    msgid: str = ""  # X-GM-MSGID: given in order when left empty


@dataclass
class GmailStandIn:
    """Gmail-shaped account: `messages` and the user label folders they name (plus `folders`)."""
    messages: list[GmailMessage]
    folders: list[str] = field(default_factory=list)
    port: int = 0
    user: str = USER
    password: str = PASSWORD
    host: str = "127.0.0.1"
    separator: str = "/"
    prefix: str = ""

    def __post_init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="gmail-standin-"))
        self.log = self._dir / "commands.log"
        self._proc: subprocess.Popen | None = None
        for n, m in enumerate(self.messages):
            m.msgid = m.msgid or str(1278455344230334865 + n)

    @property
    def url(self) -> str:
        return f"imap://{self.user}@{self.host}:{self.port}"

    def env(self, role: str) -> dict:
        return {f"MIGRATOR_{role.upper()}_PASSWORD": self.password}

    def _storage(self) -> dict:
        user = sorted({lab for m in self.messages for lab in m.labels if not lab.startswith("\\")} | set(self.folders))
        boxes: dict[str, list] = {name: [] for name in [*SYSTEM, ALL_MAIL, *user]}
        label_box = {label: name for name, label in SYSTEM.items()} | {lab: lab for lab in user}
        for m in self.messages:
            entry = {"raw": m.raw.decode("latin-1"), "X-GM-MSGID": m.msgid, "X-GM-LABELS": list(m.labels),
                     "flags": list(m.flags), "internaldate": m.date}
            for name in [ALL_MAIL, *(label_box[lab] for lab in m.labels)]:
                boxes[name].append(dict(entry))
        gmail = {name.split("/", 1)[1]: {"special-use": SPECIAL[name], "messages": boxes[name]}
                 for name in boxes if name.startswith("[Gmail]/")}
        top = {name: {"messages": boxes[name]} for name in user}
        return {"INBOX": {"messages": boxes["INBOX"]},
                "": {"folders": {**top, "[Gmail]": {"flags": ["\\Noselect"], "folders": gmail}}}}

    def start(self, timeout: float = 15.0) -> GmailStandIn:
        if not (Path(NODE_PATH) / "hoodiecrow-imap").is_dir():
            raise RuntimeError(f"hoodiecrow-imap is not installed in {NODE_PATH}: run .ci/servers/hoodiecrow.sh")
        storage = self._dir / "storage.json"
        storage.write_text(json.dumps(self._storage()))
        self.port = rig.free_port()
        self._proc = subprocess.Popen(
            ["node", str(SCRIPT), str(self.port), str(storage), str(self.log)],
            env={**os.environ, "NODE_PATH": NODE_PATH}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # "ready PORT", or node's error
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"the Gmail stand-in did not start: {line}{self._proc.stdout.read()[-2000:]}")
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def __enter__(self) -> GmailStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def commands(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def bodies_fetched(self) -> int:
        """How many message bodies clients FETCHed (each UID of each FETCH of BODY[] or
        BODY.PEEK[]): the messages downloaded."""
        n = 0
        for line in self.commands():
            m = re.match(r"\S+ (UID )?FETCH (\S+) .*BODY(\.PEEK)?\[\]", line, re.I)
            if m:
                n += sum(_count(part) for part in m.group(2).split(","))
        return n

    def add_label(self, msgid: str, label: str) -> None:
        """A label added as Gmail's web client would: the message then shows in its folder too."""
        with _client(self) as c:
            c.select_folder(ALL_MAIL)
            uids = [u for u, d in c.fetch(c.search(), ["X-GM-MSGID"]).items() if str(d[b"X-GM-MSGID"]) == msgid]
            c.add_gmail_labels(uids, [label])


def _count(uidset: str) -> int:
    if ":" in uidset:
        lo, hi = uidset.split(":")
        return int(hi) - int(lo) + 1
    return 1


def _client(standin: GmailStandIn):
    from imapclient import IMAPClient
    c = IMAPClient(standin.host, standin.port, ssl=False)
    c.login(standin.user, standin.password)
    return c
