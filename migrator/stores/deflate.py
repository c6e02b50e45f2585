"""COMPRESS=DEFLATE (RFC 4978) under an imaplib connection.

After the server accepts COMPRESS DEFLATE, every byte in both directions is a raw
deflate stream (no zlib header). streams() gives a compressing send and an inflating
reader over the socket; imap_wire puts them in place of imaplib's `send` and `file`, so
imapclient, the raw APPEND and the FETCH readers keep working unchanged.

Worth it on slow links only: on a LAN the CPU it costs is more than the bytes it
saves (benchmarks/README.md has the measurement).
"""

from __future__ import annotations

import io
import zlib
from typing import Callable

COMPRESS_LEVEL = 1  # mail text compresses well already at the fastest level; attachments hardly at all
READ_SIZE = 64 * 1024
INFLATE_LIMIT = 1 << 20  # decompressed bytes per call: bounds memory whatever the ratio


class _InflatingReader(io.RawIOBase):
    """The server's compressed stream as a raw, readable stream of plain bytes."""

    def __init__(self, sock) -> None:
        self._sock = sock
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._plain = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._plain:
            pending = self._inflate.unconsumed_tail
            if pending:
                self._plain = memoryview(self._inflate.decompress(pending, INFLATE_LIMIT))
                continue
            data = self._sock.recv(READ_SIZE)
            if not data:
                return 0  # connection closed: imaplib turns this into an abort
            self._plain = memoryview(self._inflate.decompress(data, INFLATE_LIMIT))
        n = min(len(buf), len(self._plain))
        buf[:n] = self._plain[:n]
        self._plain = self._plain[n:]
        return n


def streams(sock) -> tuple[Callable[[bytes], None], io.BufferedReader]:
    """(send, file) for a connection whose COMPRESS DEFLATE was just accepted: a send that
    compresses onto `sock`, and a buffered reader of the plain bytes the server's stream holds."""
    deflate = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)

    def send(data) -> None:
        # A sync flush per write: the server must see each command whole, not when a buffer fills.
        sock.sendall(deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH))

    return send, io.BufferedReader(_InflatingReader(sock), buffer_size=READ_SIZE)
