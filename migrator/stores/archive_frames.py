"""One message read back from its zstd frame and checked before its bytes are used.

Every reader of an archive's bodies goes through read_checked(): the store's fetch() (restore,
verify, a backup's read-back) and `archive check`. A message that fails is *damaged*: the reason
is returned instead of the bytes, and nothing of it is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import zstandard

from migrator.digest import fingerprint


@dataclass(frozen=True)
class Place:
    """Where a message's frame is, and what its bytes must be (an index row)."""

    file: str
    offset: int
    length: int
    size: int
    sha256: str


def read_checked(data_dir: str, place: Place, dctx: zstandard.ZstdDecompressor) -> tuple[bytes, str | None]:
    """(bytes, None), or (b"", why the message is damaged)."""
    name = f"data/{place.file}"
    try:
        with open(os.path.join(data_dir, place.file), "rb") as fh:
            fh.seek(place.offset)
            frame = fh.read(place.length)
    except FileNotFoundError:
        return b"", f"data file {name} is missing"
    except OSError as e:
        return b"", f"data file {name} cannot be read: {e.strerror or e}"
    if len(frame) < place.length:
        return b"", (f"data file {name} is truncated: it ends at byte {place.offset + len(frame)}, "
                     f"where this message's frame ends at byte {place.offset + place.length}")
    try:
        # The frame's content checksum (version 2) is checked by zstd itself.
        body = dctx.decompress(frame, max_output_size=place.size)
    except zstandard.ZstdError as e:
        return b"", f"its zstd frame does not decode ({e})"
    if len(body) != place.size:
        return b"", f"it decodes to {len(body)} bytes, the index says {place.size}"
    if fingerprint(body) != place.sha256:
        return b"", "its bytes do not match the SHA-256 kept in the index"
    return body, None
