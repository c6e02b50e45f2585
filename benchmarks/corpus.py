"""A seeded, deterministic mail corpus with realistic sizes, folders and flags.

Sizes: most messages are 2-50 KB of text (log-uniform), a few carry multi-MB
base64 attachments so that the total reaches the requested size, like a real
mailbox where a handful of attachments are most of the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# (folder components, share of the messages): one big folder (INBOX) so that
# splitting inside a folder matters, nested folders, a special-use one.
FOLDERS = [
    (("INBOX",), 0.40),
    (("Sent",), 0.12),
    (("Archive", "2019"), 0.10),
    (("Archive", "2020"), 0.10),
    (("Archive", "2021"), 0.07),
    (("Work", "Projects", "Alpha"), 0.06),
    (("Work", "Projects", "Beta"), 0.04),
    (("Lists", "dovecot"), 0.07),
    (("Lists", "python"), 0.04),
]
FLAG_ODDS = [("\\Seen", 0.7), ("\\Answered", 0.1), ("\\Flagged", 0.05), ("\\Draft", 0.01),
             ("$Forwarded", 0.03), ("$Label1", 0.05), ("NonJunk", 0.2), ("Work", 0.03)]
WORDS = ("the of and to in is you that it he was for on are as with his they at be this from have or by one "
         "had not but what all were when we there can an your which their said if do will each about how up "
         "out them then she many some so these would other into has more her two like him see time could no "
         "make than first been its who now people my made over did down only way find use may water long "
         "little very after words called just where most know migration mailbox server folder message").split()


@dataclass(frozen=True)
class Mail:
    folder: tuple[str, ...]
    body: bytes
    flags: tuple[str, ...]
    date: datetime


def _sizes(rng: random.Random, n: int, total: int) -> list[int]:
    small = [int(math.exp(rng.uniform(math.log(2_000), math.log(50_000)))) for _ in range(n)]
    # Replace some small ones by 1-6 MB attachments until the total is reached
    # (at most 5% of the messages, so the shape stays "mostly small").
    room = total - sum(small)
    idx = list(range(n))
    rng.shuffle(idx)
    for i in idx[: max(0, n // 20)]:
        if room <= 500_000:
            break
        big = min(room + small[i], rng.randint(1_000_000, 6_000_000))
        room -= big - small[i]
        small[i] = big
    return small


def _text(rng: random.Random, pool: bytes, size: int) -> bytes:
    size = min(size, len(pool) // 2)  # text parts stay far below the pool size
    start = pool.index(b"\r\n", rng.randrange(0, len(pool) - size)) + 2
    end = pool.rfind(b"\r\n", start, start + size) + 2  # whole lines: no bare CR/LF, which servers rewrite
    return pool[start:end]


def folder_weights(folders: int = 0) -> list[tuple[tuple[str, ...], float]]:
    """FOLDERS, or with folders > len(FOLDERS) that many: the extra ones (Folders/fNNN, a mailbox
    of many small folders, where round trips per folder count) share 30% of the messages."""
    extra = folders - len(FOLDERS)
    if extra <= 0:
        return FOLDERS
    return ([(f, w * 0.7) for f, w in FOLDERS]
            + [(("Folders", f"f{k:03d}"), 0.3 / extra) for k in range(extra)])


def build(messages: int = 5000, mb: float = 250, seed: int = 1, folders: int = 0) -> list[Mail]:
    rng = random.Random(seed)
    lines, line, have = [], [], 0
    while have < 600_000:
        line.append(rng.choice(WORDS))
        if len(line) > 12:
            lines.append((" ".join(line) + "\r\n").encode())
            have += len(lines[-1])
            line = []
    pool = b"".join(lines)
    names = [f for f, _ in folder_weights(folders)]
    weights = [w for _, w in folder_weights(folders)]
    base = datetime(2019, 1, 1, tzinfo=timezone.utc)
    out = []
    for i, size in enumerate(_sizes(rng, messages, int(mb * 1_000_000))):
        folder = rng.choices(names, weights)[0]
        flags = tuple(sorted(f for f, p in FLAG_ODDS if rng.random() < p))
        date = base + timedelta(seconds=rng.randrange(3 * 365 * 86400))
        head = (
            f"From: Sender {i % 97} <s{i % 97}@example.org>\r\nTo: user@example.net\r\n"
            f"Subject: bench message {i}\r\nDate: {date.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
            f"Message-ID: <bench-{seed}-{i}@example.org>\r\nMIME-Version: 1.0\r\n"
        ).encode()
        if size < 500_000:
            body = head + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + _text(rng, pool, max(200, size - len(head)))
        else:
            raw = rng.randbytes(int(size * 0.74))
            att = base64.encodebytes(raw).replace(b"\n", b"\r\n")
            body = (head + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
                    b"Content-Type: text/plain\r\n\r\n" + _text(rng, pool, 2000) +
                    b'\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n'
                    b'Content-Disposition: attachment; filename="file.bin"\r\n\r\n' + att + b"--b1--\r\n")
        out.append(Mail(folder, body, flags, date))
    return out


def expected(corpus: list[Mail]) -> dict[tuple, Counter]:
    """{folder: Counter((sha256, flags))}: what an identical destination holds."""
    want: dict[tuple, Counter] = defaultdict(Counter)
    for m in corpus:
        want[m.folder][(hashlib.sha256(m.body).hexdigest(), m.flags)] += 1
    return dict(want)
