"""Baseline clients of the benchmark, run as subprocesses so their RSS is their own.

  naive: one connection per side, one FETCH and one APPEND per message (imapclient),
         what a simple script or imapsync-like tool does.
  limit: the server limit: the source maildir's files pushed into the destination
         as fast as the server takes them (pipelined MULTIAPPEND, LITERAL+, a few
         connections), no migration logic at all.

Usage (by bench.py): python benchmarks/clients.py naive|limit SRC_PORT DST_PORT SRC_USER DST_USER [MAILDIR]
with the passwords in BENCH_SRC_PASSWORD / BENCH_DST_PASSWORD.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
from pathlib import Path

from imapclient import IMAPClient

FLAG_LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}


def login(port: int, user: str, password: str) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=300)
    c.normalise_times = False
    c.login(user, password)
    return c


def naive(src: IMAPClient, dst: IMAPClient) -> int:
    copied = 0
    for flags, delim, name in src.list_folders():
        if any(f.lower() == b"\\noselect" for f in flags):
            continue
        if name != "INBOX" and not dst.folder_exists(name):
            dst.create_folder(name)
        src.select_folder(name, readonly=True)
        for uid in src.search("ALL"):
            d = src.fetch([uid], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])[uid]
            keep = [f for f in d[b"FLAGS"] if f.lower() != b"\\recent"]
            dst.append(name, d[b"BODY[]"], keep, d[b"INTERNALDATE"])
            copied += 1
    return copied


def maildir_folders(root: Path, separator: str = "/") -> list[tuple[str, Path]]:
    """Dovecot Maildir++: INBOX is the root, folder a/b is '.a.b'."""
    out = [("INBOX", root)]
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.startswith(".") and (d / "cur").is_dir():
            out.append((d.name[1:].replace(".", separator), d))
    return out


def maildir_messages(d: Path) -> list[tuple[Path, list[str]]]:
    keywords = {}
    kw_file = d / "dovecot-keywords"
    if kw_file.exists():
        for line in kw_file.read_text().splitlines():
            idx, _, name = line.partition(" ")
            keywords[chr(ord("a") + int(idx))] = name
    out = []
    for sub in ("cur", "new"):
        for f in sorted((d / sub).iterdir()):
            info = f.name.partition(":2,")[2]
            flags = [FLAG_LETTERS.get(ch) or keywords.get(ch) for ch in info]
            out.append((f, [x for x in flags if x]))
    return out


class Pusher:
    """One raw IMAP connection pushing APPEND commands without waiting (window of N)."""

    def __init__(self, port: int, user: str, password: str, window: int = 8, reader: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self._cmd(b"a0 LOGIN " + user.encode() + b" " + password.encode())
        self.window = threading.Semaphore(window)
        self.errors: list[bytes] = []
        self.n = 0
        if reader:  # APPEND answers are read by a thread of their own
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()

    def _cmd(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")
        while True:
            resp = self.file.readline()
            if not resp or resp.startswith(line.split(b" ")[0] + b" "):
                if b" OK" not in resp:
                    raise RuntimeError(f"server said {resp!r}")
                return

    def _read(self) -> None:
        while True:
            line = self.file.readline()
            if not line:
                return
            if line.startswith(b"p"):
                if b" OK" not in line[:20]:
                    self.errors.append(line)
                self.window.release()
                if line.startswith(b"pEND"):
                    return

    def append(self, mailbox: str, items: list[tuple[bytes, list[str]]]) -> None:
        self.window.acquire()
        self.n += 1
        parts = [f'p{self.n} APPEND "{mailbox}"'.encode()]
        for body, flags in items:
            parts.append(b" (" + " ".join(flags).encode() + b") {" + str(len(body)).encode() + b"+}\r\n")
            parts.append(body)
        parts.append(b"\r\n")
        self.sock.sendall(b"".join(parts))

    def finish(self) -> None:
        self.window.acquire()
        self.sock.sendall(b"pEND NOOP\r\n")
        self.reader.join(600)
        self.sock.sendall(b"z LOGOUT\r\n")
        self.sock.close()


def create_all(port: int, user: str, password: str, names: list[str]) -> None:
    """All CREATEs sent at once (pipelined), parents before children: a tool-less limit does not
    wait a round trip per folder. Names are the corpus's plain ASCII ones."""
    if not names:
        return
    conn = Pusher(port, user, password, reader=False)
    conn.sock.sendall(b"".join(f'c{i} CREATE "{name}"\r\n'.encode() for i, name in enumerate(names)))
    done = 0
    while done < len(names):
        line = conn.file.readline()
        if not line:
            raise RuntimeError("connection closed during CREATE")
        if line.startswith(b"c"):
            done += 1
            if b" OK" not in line[:20] and b"ALREADYEXISTS" not in line:
                raise RuntimeError(f"CREATE failed: {line!r}")
    conn.sock.sendall(b"z LOGOUT\r\n")
    conn.sock.close()


def limit(maildir: Path, port: int, user: str, password: str, connections: int = 4,
          batch_bytes: int = 4 << 20, batch_count: int = 200) -> int:
    work: queue.Queue = queue.Queue()
    total = 0
    folders = maildir_folders(maildir)
    create_all(port, user, password, [name for name, _d in folders if name != "INBOX"])
    for name, d in folders:
        batch, size = [], 0
        for path, flags in maildir_messages(d):
            batch.append((path, flags))
            size += path.stat().st_size
            if size >= batch_bytes or len(batch) >= batch_count:
                work.put((name, batch))
                batch, size = [], 0
        if batch:
            work.put((name, batch))
    total = sum(len(b) for _, b in list(work.queue))
    errors: list[bytes] = []

    def run() -> None:
        p = Pusher(port, user, password)
        while True:
            try:
                name, batch = work.get_nowait()
            except queue.Empty:
                break
            p.append(name, [(path.read_bytes(), flags) for path, flags in batch])
        p.finish()
        errors.extend(p.errors)

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"APPEND failed: {errors[0][:200]!r}")
    return total


def main(argv: list[str]) -> int:
    mode, src_port, dst_port, src_user, dst_user = argv[:5]
    src_pw, dst_pw = os.environ["BENCH_SRC_PASSWORD"], os.environ["BENCH_DST_PASSWORD"]
    if mode == "naive":
        src, dst = login(int(src_port), src_user, src_pw), login(int(dst_port), dst_user, dst_pw)
        n = naive(src, dst)
        src.logout()
        dst.logout()
    elif mode == "limit":
        n = limit(Path(argv[5]), int(dst_port), dst_user, dst_pw)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
