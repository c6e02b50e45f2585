"""The real mutt, driven without a person: what it makes of an mbox file or a maildir.

    seen = read_with_mutt([path_of_folder_1, ...], tmp_path / "mutt")
    seen[0].messages   # each message as mutt hands it to a pipe, in mailbox order
    seen[0].flags      # the maildir info letters (`:2,FRS`) of mutt's copy of each message

mutt needs a terminal: it runs under a pseudo-terminal, with no user configuration (`-n -F` a
muttrc written here, HOME a scratch directory) and every folder read-only. One session for all
folders: keys pushed with `-e push` open each folder in turn (`<change-folder>`), tag every
message (`~A`), pipe them all to one `cat` (`pipe_split=no`, so mutt puts `pipe_sep`, a random
token, after each message, and `pipe_decode=no`: the message as stored, not decoded) and copy
them all to a new maildir (`<copy-message>`, `mbox_type=Maildir`), whose file names carry the
flags mutt read. Bounded: the session is killed after `timeout` seconds.

mutt is Debian's `mutt` package (.ci/run installs it). Outside CI (env CI unset) a machine
without it skips the tests that use it; in CI a missing mutt fails them.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class MuttView:
    messages: list[bytes]  # piped by mutt, in mailbox order (sort=mailbox-order)
    flags: list[str]  # the info letters of mutt's maildir copy of each, in the same order
    matching: dict[str, list[bytes]]  # pattern -> the messages mutt finds it matches, piped likewise


def mutt_binary() -> str:
    """mutt's path; skips the test when mutt is absent, except in CI, where that fails it."""
    path = shutil.which("mutt")
    if path is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("mutt is not installed (.ci/run installs the Debian package)")
        pytest.skip("mutt is not installed (apt-get install mutt)")
    return path


def read_with_mutt(folders: list[Path], work: Path, patterns: tuple[str, ...] = (),
                   timeout: float = 60.0) -> list[MuttView]:
    """What mutt makes of each folder (an mbox file or a maildir directory), and which messages
    it finds match each of `patterns` (mutt patterns, e.g. ~D: deleted). Each pattern must match
    some message of every folder: with none tagged, mutt's <tag-prefix> acts on the current one."""
    work, folders = work.resolve(), [folder.resolve() for folder in folders]  # mutt runs in work
    work.mkdir(parents=True)
    sep = f"--mutt-{uuid.uuid4().hex}--"
    (work / "muttrc").write_text(_MUTTRC.format(sep=sep, work=work, first=folders[0]))
    keys = "".join(f"<change-folder>{folder}<enter><tag-pattern>~A<enter>"
                   f"<tag-prefix><pipe-message>cat > {work}/piped-{n}<enter>"
                   f"<tag-prefix><copy-message>{work}/copied-{n}<enter>"
                   + "".join(f"<untag-pattern>~A<enter><tag-pattern>{pattern}<enter>"
                             f"<tag-prefix><pipe-message>cat > {work}/piped-{n}-{k}<enter>"
                             for k, pattern in enumerate(patterns))
                   for n, folder in enumerate(folders))
    screen = _run([mutt_binary(), "-n", "-F", str(work / "muttrc"), "-R", "-f", str(folders[0]),
                   "-e", f'push "{keys}<quit>"'], work, timeout)
    views = []
    for n in range(len(folders)):
        piped, copies = work / f"piped-{n}", work / f"copied-{n}" / "cur"
        assert piped.exists() and copies.is_dir(), f"mutt did not read {folders[n]}: {screen[-2000:]!r}"
        messages = _split(piped, sep)
        # mutt names its copies <time>.<pid>_<sequence>.<host>:2,<letters>, sequence in copy order.
        names = sorted(os.listdir(copies), key=lambda name: int(name.split("_", 1)[1].split(".", 1)[0]))
        matching = {pattern: _split(work / f"piped-{n}-{k}", sep) for k, pattern in enumerate(patterns)}
        views.append(MuttView(messages, [name.rsplit(":2,", 1)[1] for name in names], matching))
    return views


def _split(piped: Path, sep: str) -> list[bytes]:
    *messages, rest = piped.read_bytes().split(sep.encode())
    assert rest == b"", f"mutt's pipe output {piped} does not end with its separator"
    return messages


_MUTTRC = """\
set folder="{work}"
set spoolfile="{first}"
set mbox="{work}/read"
set record=""
set postponed="{work}/postponed"
set header_cache=""
set read_only=yes
set mbox_type=Maildir
set confirmcreate=no
set confirmappend=no
set move=no
set mark_old=no
set quit=yes
set wait_key=no
set beep=no
set sleep_time=0
set sort=mailbox-order
set pipe_split=no
set pipe_decode=no
set pipe_sep="{sep}"
"""


def _run(argv: list[str], work: Path, timeout: float) -> bytes:
    """argv under a pseudo-terminal until it exits (killed after timeout); what it drew."""
    main, sub = pty.openpty()
    env = {"HOME": str(work), "TERM": "vt100", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    proc = subprocess.Popen(argv, stdin=sub, stdout=sub, stderr=sub, env=env, cwd=work, start_new_session=True)
    os.close(sub)
    screen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 0.2)[0]:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: mutt exited and closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait(10)
    assert code == 0, f"mutt exited {code} (killed after {timeout} s?): {screen[-2000:]!r}"
    return screen
