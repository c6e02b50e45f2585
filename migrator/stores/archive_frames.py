"""Frames written, and one message read back from its frame and checked before its bytes are used.

Every reader of an archive's bodies goes through FrameReader.read(): the store's fetch()
(restore, verify, export, a backup's read-back) and `archive check`. A message that fails is
*damaged*: the reason is returned instead of the bytes, and nothing of it is used.

A frame (version 4 on) holds one or more entries, each a separator line then the message's bytes:

    migrator-archive-message <size> <sha>\\n<size bytes>

where <sha> is the first 16 hex digits of the message's SHA-256 (version 5; all 64 in version 4:
random digits zstd cannot compress, 1% of a small-message archive; the index keeps all of it)

so `zstd -dc data/X.zst` gives a stream a person (or a ten-line script) can split, and an index
row says where its message starts in the decoded frame (`start`). Small messages share a frame
(up to GROUP_BYTES of them: zstd finds what they have in common), a big one has its own. A frame
of version 1 or 2 holds one message and no separator (start 0).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import zstandard

from migrator.digest import fingerprint
from migrator.stores.archive_crypt import AGE_MAGIC, Opener, needs_identity

ZSTD_LEVEL = 11  # docs/archive-format.md, "Size": within 1.05x of xz -6 at >10x its speed, with GROUP_BYTES
GROUP_BYTES = 4 * 1024 * 1024  # small messages are grouped into frames of about this many bytes
ALONE_OVER = 256 * 1024  # a message bigger than this has a frame of its own
# What a frame may decode to, at most (a damaged header must not make us allocate gigabytes).
MAX_GROUP_DECODED = 2 * GROUP_BYTES
AGE_HEADER_MAX = 64 * 1024  # an age header ends (its "--- " MAC line) within this, for any number of recipients


@dataclass(frozen=True)
class Place:
    """Where a message's frame is, where the message is in it, and what its bytes must be (an index row)."""

    file: str
    offset: int
    length: int
    size: int
    sha256: str
    start: int = 0
    frame_sha256: str | None = None  # of the frame as stored, in an encrypted archive (else None)


_SEPARATOR = b"migrator-archive-message "
_ENTRY = re.compile(rb"migrator-archive-message (\d+) ([0-9a-f]{64}|[0-9a-f]{16})\n")
SEPARATOR_SHA = 16  # hex digits of the SHA-256 a separator line carries (64 bits: enough to name damage)


def separator(size: int, sha256: str) -> bytes:
    return _SEPARATOR + b"%d %s\n" % (size, sha256[:SEPARATOR_SHA].encode())


def entry_bytes(size: int) -> int:
    """How many bytes a message of `size` takes in a decoded frame, its separator line included."""
    return len(separator(size, "0" * 64)) + size


def entries(decoded: bytes) -> list[tuple[int, int, str]]:
    """(start, size, the SHA-256 digits of its separator line) of each entry of a decoded frame, in order;
    [] for a frame without separator lines (version 1 to 3)."""
    out, pos = [], 0
    while (entry := _ENTRY.match(decoded, pos)) is not None:
        start, size = entry.end(), int(entry[1])
        out.append((start, size, entry[2].decode()))
        pos = start + size
    return out


def regroup(decoded: bytes, keep: set[int]) -> tuple[bytes, dict[int, int]] | None:
    """A frame's content holding only the entries that start at `keep`, each checked against its
    separator line's SHA-256 digits (and written with this version's separator line): (content,
    old start -> new start); None if one of them is not an intact entry (the caller then keeps the
    frame as it is)."""
    parts, moved, fill = [], {}, 0
    for start, size, sha in entries(decoded):
        if start not in keep:
            continue
        body = decoded[start:start + size]
        full = fingerprint(body)
        if len(body) != size or not full.startswith(sha):
            return None
        head = separator(size, full)
        moved[start] = fill + len(head)
        parts += [head, body]
        fill += len(head) + size
    return (b"".join(parts), moved) if set(moved) == keep else None


Frame = tuple[bytes, list[tuple[int, int]]]  # a frame's content; (index of the body, its start) of each entry


def frames(bodies: list[tuple[bytes, str]], group_bytes: int = GROUP_BYTES) -> list[Frame]:
    """Bodies (with their fingerprints) as frames' contents: [(decoded frame, [(index of the body in
    `bodies`, its start in the frame)])]. Small bodies share frames up to group_bytes, in their
    order; a big one has a frame of its own and does not cut the small ones' group in two (a group
    cut short compresses worse: zstd starts each frame cold). group_bytes 0: one body per frame."""
    out: list[Frame] = []
    parts: list[bytes] = []
    starts: list[tuple[int, int]] = []
    fill = 0
    for i, (body, sha) in enumerate(bodies):
        head = separator(len(body), sha)
        if len(body) > ALONE_OVER:
            out.append((head + body, [(i, len(head))]))
            continue
        if parts and fill >= group_bytes:
            out.append((b"".join(parts), starts))
            parts, starts, fill = [], [], 0
        starts.append((i, fill + len(head)))
        parts += [head, body]
        fill += len(head) + len(body)
    if parts:
        out.append((b"".join(parts), starts))
    return out


class FrameReader:
    """Reads messages, decoding each frame once for consecutive reads of the messages it holds."""

    def __init__(self, data_dir: str, sealed: bool = False, opener: Opener | None = None):
        """sealed: the archive is encrypted; opener: the identity that decrypts it (None: its
        bodies cannot be read, only sealed_damage() checked)."""
        self.data_dir = data_dir
        self.sealed = sealed
        self._opener = opener
        self._dctx = zstandard.ZstdDecompressor()
        self._last: tuple[tuple[str, int, int], bytes | None, str | None] | None = None
        self._sealed_last: tuple[tuple[str, int, int], str | None] | None = None

    @property
    def blind(self) -> bool:
        """Encrypted, and no identity to decrypt it: only sealed_damage() can be asked."""
        return self.sealed and self._opener is None

    def read(self, place: Place) -> tuple[bytes, str | None]:
        """(bytes, None), or (b"", why the message is damaged)."""
        key = (place.file, place.offset, place.length)
        if self.blind:
            raise needs_identity(os.path.dirname(self.data_dir), "reading its messages")
        if self._last is None or self._last[0] != key:
            self._last = (key, *self._frame(place))
        decoded, why = self._last[1], self._last[2]
        if decoded is None:
            return b"", why
        body = decoded[place.start:place.start + place.size]
        if len(body) != place.size:
            return b"", f"it decodes to {len(body)} bytes, the index says {place.size}"
        if fingerprint(body) != place.sha256:
            return b"", "its bytes do not match the SHA-256 kept in the index"
        return body, None

    def intact(self, place: Place) -> set[tuple[int, str]] | None:
        """(start, SHA-256) of each entry of this frame whose bytes match the SHA-256 digits of
        its separator line; None if the frame has no separator lines (version 1 or 2)."""
        self.read(place)  # decodes it (or finds it damaged), once
        assert self._last is not None
        decoded = self._last[1]
        if decoded is None:
            return set()
        if not decoded.startswith(_SEPARATOR):
            return None
        out = set()
        for start, size, sha in entries(decoded):
            full = fingerprint(decoded[start:start + size])
            if full.startswith(sha):
                out.add((start, full))
        return out

    def decoded(self, place: Place) -> bytes | None:
        """The frame's content (checked by zstd's content checksum), None if it is damaged."""
        self.read(place)
        assert self._last is not None
        return self._last[1]

    def sealed_damage(self, place: Place) -> str | None:
        """What is wrong with the frame as stored, told without decoding it: it is not all there,
        its bytes do not match frame_sha256, or (encrypted) it is no age file. None: as written.
        Each frame is read once for consecutive calls on the messages it holds."""
        key = (place.file, place.offset, place.length)
        if self._sealed_last is None or self._sealed_last[0] != key:
            stored, why = self._stored(place)
            if stored is not None:
                why = (_stored_damage(stored, place, self.sealed) if place.frame_sha256 is not None
                       else "its frame's SHA-256 was not recorded: only decrypting it can check it")
            self._sealed_last = (key, why)
        return self._sealed_last[1]

    def _stored(self, place: Place) -> tuple[bytes | None, str | None]:
        name = f"data/{place.file}"
        try:
            with open(os.path.join(self.data_dir, place.file), "rb") as fh:
                fh.seek(place.offset)
                frame = fh.read(place.length)
        except FileNotFoundError:
            return None, f"data file {name} is missing"
        except OSError as e:
            return None, f"data file {name} cannot be read: {e.strerror or e}"
        if len(frame) < place.length:
            return None, (f"data file {name} is truncated: it ends at byte {place.offset + len(frame)}, "
                          f"where this message's frame ends at byte {place.offset + place.length}")
        return frame, None

    def _frame(self, place: Place) -> tuple[bytes | None, str | None]:
        frame, why = self._stored(place)
        if frame is None:
            return None, why
        if self.sealed and place.frame_sha256 is not None and (why := _stored_damage(frame, place, True)) is not None:
            return None, why
        if self._opener is not None:
            frame, why = self._opener.open(frame)
            if frame is None:
                return None, why
        bound = max(place.start + place.size, MAX_GROUP_DECODED)
        try:
            declared = zstandard.get_frame_parameters(frame).content_size
            if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > bound:
                return None, f"its zstd frame says it holds {declared} bytes, more than any frame does"
            # The frame's content checksum (version 2 on) is checked by zstd itself.
            return self._dctx.decompress(frame, max_output_size=bound), None
        except zstandard.ZstdError as e:
            return None, f"its zstd frame does not decode ({e})"


def frame_digest(frame: bytes) -> str:
    """The SHA-256 of a frame as stored (the index's frame_sha256)."""
    return hashlib.sha256(frame).hexdigest()


def _stored_damage(frame: bytes, place: Place, sealed: bool) -> str | None:
    if frame_digest(frame) != place.frame_sha256:
        return "its frame's bytes do not match the frame SHA-256 kept in the index"
    if sealed and not (frame.startswith(AGE_MAGIC) and b"\n--- " in frame[:AGE_HEADER_MAX]):
        return "its frame is not an age file (no age header)"
    return None
