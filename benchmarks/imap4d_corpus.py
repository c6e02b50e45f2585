"""What GNU Mailutils imap4d (mbox) does to the real-world corpus: APPEND each message, FETCH it back.

    python benchmarks/imap4d_corpus.py            # both modes, ~4 minutes
    python benchmarks/imap4d_corpus.py --mode dated

Run from the repository root as root (.ci/servers/imap4d.sh installs imap4d).  One throwaway
instance (tests/servers/imap4d.py); per mode a fresh user and folder `Corpus`, which the
appending session never selects.  Modes: `bare` = `APPEND Corpus {n}`; `dated` =
`APPEND Corpus (\\Seen) "14-Mar-2019 15:09:26 +0200" {n}` (what a migration sends).
Then another session EXAMINEs the folder and fetches BODY[], RFC822.SIZE (t1); a third
SELECTs and CLOSEs it; BODY[] is fetched again (t2).  Prints refusals grouped by answer,
the classes of alteration with examples, and what changed between t1 and t2.
"""
from __future__ import annotations

import argparse
import collections
import re
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import rig  # noqa: E402
from tests.servers.imap4d import Imap4d  # noqa: E402

MU_FIELDS = {b"x-uid", b"x-imapbase", b"status", b"x-status", b"x-keywords"}
SEP = re.compile(rb"\r?\n[ \t]*\r?\n")


class Conn:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.n = 0

    def cmd(self, text: str, literal: bytes | None = None) -> list[bytes]:
        self.n += 1
        tag = f"c{self.n}".encode()
        if literal is None:
            self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text.encode() + f" {{{len(literal)}}}\r\n".encode())
            cont = self.file.readline()
            if not cont.startswith(b"+"):
                return [cont]
            self.sock.sendall(literal + b"\r\n")
        out = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError(out)
            out.append(line)
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                out.append(self.file.read(int(m.group(1))))
            elif line.startswith(tag + b" "):
                return out


def fetch_all(server: Imap4d, acc: rig.Account, folder: str) -> dict[int, tuple[int, bytes]]:
    c = Conn(server.port)
    c.cmd(f'LOGIN {acc.user} "{acc.password}"')
    c.cmd(f"EXAMINE {folder}")
    lines = c.cmd("FETCH 1:* (RFC822.SIZE BODY.PEEK[])")
    c.cmd("LOGOUT")
    out = {}
    for i, line in enumerate(lines):
        m = re.match(rb"\* (\d+) FETCH \(RFC822\.SIZE (\d+) BODY\[\] \{\d+\}\r\n$", line)
        if m:
            out[int(m.group(1))] = (int(m.group(2)), lines[i + 1])
    return out


def _split(b: bytes) -> tuple[bytes, bytes]:
    m = SEP.search(b)
    return (b[:m.start()], b[m.start():]) if m else (b, b"")


def _names(b: bytes) -> set[bytes]:
    return {line.split(b":")[0].strip().lower() for line in re.split(rb"\r?\n", _split(b)[0])
            if b":" in line and line[:1] not in b" \t"}


def _strip_mu(b: bytes) -> bytes:
    head, rest = _split(b)
    out, skip = [], False
    for line in re.split(rb"(?<=\n)", head):
        if line[:1] in (b" ", b"\t"):
            if not skip:
                out.append(line)
            continue
        skip = (line.split(b":", 1)[0].strip().lower() if b":" in line else None) in MU_FIELDS
        if not skip:
            out.append(line)
    h2 = b"".join(out)
    if not head.endswith(b"\n"):
        h2 = re.sub(rb"\r?\n$", b"", h2)
    return h2 + rest


def _respace(b: bytes) -> bytes:
    head, rest = _split(b)
    out = []
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t") and b":" in line:
            name, value = line.split(b":", 1)
            line = name.rstrip(b" \t") + b": " + value.lstrip(b" \t")
        out.append(line)
    return b"\r\n".join(out) + rest


def _second_line(raw: bytes) -> bytes:
    lines = re.split(rb"\r?\n", raw)
    return (lines[1] if len(lines) > 1 else lines[0]) + b"\r\n"


def classify(sent: bytes, served: bytes) -> list[str]:
    """What happened to one message, as a list of feature names ("OTHER" if unexplained)."""
    if served == sent:
        return ["identical"]
    f = [f"added {n.decode()}" for n in sorted((_names(served) - _names(sent)) & MU_FIELDS)]
    if _names(sent) & MU_FIELDS:
        f.append("(sent with its own Status/X-UID/X-Keywords...)")
    p = sent
    if p.startswith(b"From "):
        p = p.split(b"\n", 1)[1] if b"\n" in p else b""
        f.append("leading 'From ' line removed")
    if b"\0" in p:
        p = p[:p.index(b"\0")]
        f.append("cut at first NUL")
    if re.search(rb"(?<!\r)\n", p):
        p = re.sub(rb"(?<!\r)\n", b"\r\n", p)
        f.append("bare LF -> CRLF")
    q = _respace(p)
    if q != p:
        p = q
        f.append("header fields re-spaced")
    s_served, s_pred = _strip_mu(served), _strip_mu(p)
    if s_served != s_pred and s_served.startswith(s_pred) and set(s_served[len(s_pred):]) <= set(b"\r\n"):
        f.append("CRLFs appended (no header/body separator)")
        s_pred = s_served
    if s_served != s_pred and re.match(rb"[ \t]*\r?\n", sent):
        f.append("leading blank line: header became body")
        s_pred = s_served
    if s_served != s_pred:
        f.append("OTHER")
    return f


def run(server: Imap4d, mode: str, corpus: list[tuple[str, bytes]]) -> None:
    acc = server.new_user(mode)
    args = "" if mode == "bare" else ' (\\Seen) "14-Mar-2019 15:09:26 +0200"'
    c = Conn(server.port)
    c.cmd(f'LOGIN {acc.user} "{acc.password}"')
    c.cmd("CREATE Corpus")
    c.cmd("SELECT INBOX")
    accepted, refused = [], collections.defaultdict(list)
    refused_after: dict[int, list[bytes]] = collections.defaultdict(list)  # accepted index -> refused raws
    t0 = time.monotonic()
    for name, raw in corpus:
        answer = c.cmd(f"APPEND Corpus{args}", raw)[-1].split(b" ", 1)[1].strip().decode(errors="replace")
        if answer.startswith("OK"):
            accepted.append((name, raw))
        else:
            refused[answer].append(name)
            refused_after[len(accepted)].append(raw)
    t_append = time.monotonic() - t0
    c.cmd("LOGOUT")
    t1 = fetch_all(server, acc, "Corpus")
    c = Conn(server.port)
    c.cmd(f'LOGIN {acc.user} "{acc.password}"')
    c.cmd("SELECT Corpus")
    c.cmd("CLOSE")
    c.cmd("LOGOUT")
    t2 = fetch_all(server, acc, "Corpus")
    assert len(t1) == len(accepted) == len(t2), (len(t1), len(accepted), len(t2))

    print(f"== {mode}: {len(accepted)} of {len(corpus)} accepted, APPEND took {t_append:.0f} s "
          f"({sum(len(r) for _n, r in accepted) / t_append / 1e6:.2f} MB/s)")
    for answer, names in refused.items():
        print(f"   refused {len(names)}: {answer}  e.g. {names[:3]}")
    classes, features = collections.defaultdict(list), collections.defaultdict(list)
    size_ok = size_same = 0
    changed = collections.Counter()
    for seq, (name, raw) in enumerate(accepted, 1):
        size, served = t1[seq]
        size_ok += size == len(served) and t2[seq][0] == len(t2[seq][1])
        size_same += len(served) == len(raw)
        f = classify(raw, served)
        if "OTHER" in f and any(_second_line(r) in served for r in refused_after[seq]):
            f[f.index("OTHER")] = "a refused APPEND that followed was written into its body"
        if not [k for k in f if not k.startswith("(")]:
            f.append("only its own Status/X-UID/... fields rewritten")
        for k in f:
            features[k].append(name)
        classes[" + ".join(k for k in f if not k.startswith("("))].append(name)
        if t2[seq][1] != served:
            a = set(re.split(rb"\r\n", _split(served)[0]))
            b = set(re.split(rb"\r\n", _split(t2[seq][1])[0]))
            changed[" ".join(sorted(re.sub(rb"\d+", b"N", x).decode(errors="replace") for x in b - a))] += 1
    print(f"   RFC822.SIZE == len(BODY[]): {size_ok} of {len(accepted)}; same size as sent: {size_same}")
    print("   features (one message can have several):")
    for k, v in sorted(features.items(), key=lambda kv: -len(kv[1])):
        print(f"     {len(v):5d} {k}  e.g. {v[:3]}")
    print("   classes:")
    for k, v in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        print(f"     {len(v):5d} {k}  e.g. {v[:2]}")
    print(f"   changed after another session's SELECT+CLOSE: {sum(changed.values())} "
          f"(new header lines: {dict(changed.most_common(4))})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["bare", "dated", "both"], default="both")
    args = ap.parse_args()
    corpus = rig.corpus_messages()
    with Imap4d() as server:
        for mode in (["bare", "dated"] if args.mode == "both" else [args.mode]):
            run(server, mode, corpus)


if __name__ == "__main__":
    main()
