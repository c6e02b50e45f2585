"""A FaultProxy that counts: how many sessions the server behind it has at once, and which
process opened each one.

    with ConnWatch(account.port, owners=[pid1, pid2]) as watch:
        ... point clients at 127.0.0.1:watch.port ...
    watch.peak, watch.connections, watch.owners_seen

A session counts from its accept until the client closes its side (FaultProxy then ends the pair).
A client that closes one connection and at once opens another (a slot handed on) can have its new
connection accepted before the proxy's pump has read the old FIN: each accept is therefore counted
0.1 s later, by which time the pumps have caught up; a real excess (sessions overlapping for a
login, a SELECT and a FETCH) lasts far longer than that.
"""

from __future__ import annotations

import os
import time

from tests.faultproxy import FaultProxy

SETTLE = 0.1


class ConnWatch(FaultProxy):
    def __init__(self, target_port: int, owners: list[int] | None = None):
        super().__init__(target_port)
        self.owners = owners  # pids to look for as a connection's owner (None: do not look)
        self.peak = 0
        self.owners_seen: list[int | None] = []

    def _accepted(self, peer: tuple[str, int]) -> None:
        if self.owners:
            self.owners_seen.append(_owner(peer[1], self.port, self.owners))
        self._spawn(self._count_later)

    def _count_later(self) -> None:
        time.sleep(SETTLE)
        with self._lock:
            self.peak = max(self.peak, len(self._conns))


def _owner(peer_port: int, proxy_port: int, pids: list[int]) -> int | None:
    """Which process holds the client end of a loopback connection from `peer_port` to the proxy
    at `proxy_port` (by the socket's inode in /proc/net/tcp and the processes' open files), looking
    at `pids` first; None if no process holds it any more. Both ports are matched: Linux gives one
    local port to connections to different destinations (a Dask scheduler's own connections to its
    workers could share the client's)."""
    inode = None
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == peer_port and int(fields[2].split(":")[1], 16) == proxy_port:
                inode = fields[9]
                break
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in pids]
    for pid in [*pids, *others]:  # the expected owners first; any other owner is named too
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
            except OSError:
                continue
    return None


