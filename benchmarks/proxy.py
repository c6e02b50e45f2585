"""A TCP proxy on 127.0.0.1 that delays every chunk by rtt/2 in each direction.

It simulates a WAN link: each chunk read from one side is written to the other
side rtt/2 later, in order; with mbit, the link also carries at most that many
megabits per second in each direction, shared by all connections (a slow line,
where compression may pay). It also counts open
connections (the tests use it to check --max-connections-per-host) and *turns*:
how often a client spoke again after the server had answered, i.e. the round
trips it waited for (the tests use it to check that commands are pipelined).
"""

from __future__ import annotations

import asyncio
import threading
import time


class DelayProxy:
    def __init__(self, target_port: int, rtt_ms: float = 0.0, target_host: str = "127.0.0.1",
                 mbit: float | None = None):
        self.target = (target_host, target_port)
        self.delay = rtt_ms / 2000.0
        self.bytes_per_s = mbit * 125_000 if mbit else None
        self._line_free = {"client": 0.0, "server": 0.0}  # when each direction's line is idle again
        self.bytes = {"client": 0, "server": 0}  # bytes each side sent through the proxy
        self.port = 0
        self.open_now = 0
        self.peak = 0
        self.total = 0
        self.turns = 0
        # While True, what clients sent is held here, not written to the server (a test sets it to
        # choose when an APPEND in flight at a kill lands: tests/e2e/test_in_flight.py).
        self.hold_client = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def start(self) -> "DelayProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("delay proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            # Connections still open (a client that closed without waiting for BYE) are cancelled
            # and run to their end while the loop is open, so their writers close cleanly.
            tasks = asyncio.all_tasks(self._loop)
            self._loop.set_exception_handler(_quiet_about_cancelled)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _count(self, n: int) -> None:
        with self._lock:
            self.open_now += n
            self.total += max(n, 0)
            self.peak = max(self.peak, self.open_now)

    async def _handle(self, c_reader, c_writer) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        self._count(1)
        last = ["server"]  # who sent the last chunk on this connection (the server greets first)
        try:
            await asyncio.gather(self._pipe(c_reader, s_writer, "client", last),
                                 self._pipe(s_reader, c_writer, "server", last))
        finally:
            self._count(-1)
            for w in (c_writer, s_writer):
                w.close()

    async def _pipe(self, reader, writer, side: str, last: list) -> None:
        """Copy reader -> writer; a second task writes each chunk when its delay is over."""
        q: asyncio.Queue = asyncio.Queue(maxsize=64)  # bounded: backpressure, not buffering

        async def send() -> None:
            while True:
                due, data = await q.get()
                if data is None:
                    break
                if self.bytes_per_s:  # the line carries one chunk after another, at its rate
                    start = max(time.monotonic(), self._line_free[side])
                    self._line_free[side] = start + len(data) / self.bytes_per_s
                    due = max(due, self._line_free[side])
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                while side == "client" and self.hold_client:
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(256 * 1024)
                if data:
                    with self._lock:
                        self.bytes[side] += len(data)
                        if side == "client" and last[0] == "server":
                            self.turns += 1
                    last[0] = side
                await q.put((time.monotonic() + self.delay, data or None))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()


def _quiet_about_cancelled(loop, context: dict) -> None:
    """At stop: asyncio's start_server callback reports a connection task it sees cancelled as an
    error ("Exception in callback ... CancelledError", a traceback per connection); anything
    else is reported as usual."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


class ProxyProcess:
    """A DelayProxy in a process of its own (the benchmark's): two in-process proxies would share
    one GIL, and copying every byte of a run through it capped the fastest tool's row."""

    def __init__(self, target_port: int, rtt_ms: float = 0.0, mbit: float | None = None):
        self.args = [str(target_port), str(rtt_ms), str(mbit or 0)]
        self.port = 0
        self._proc = None

    def start(self) -> "ProxyProcess":
        import subprocess
        import sys

        self._proc = subprocess.Popen([sys.executable, __file__, *self.args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        self.port = int(self._proc.stdout.readline())
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()  # the child exits when its stdin closes
            try:
                self._proc.wait(10)
            except Exception:
                self._proc.kill()


if __name__ == "__main__":  # python proxy.py TARGET_PORT RTT_MS MBIT: prints its port, runs until stdin closes
    import sys

    port, rtt, mbit = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    proxy = DelayProxy(port, rtt, mbit=mbit or None).start()
    print(proxy.port, flush=True)
    sys.stdin.read()
    proxy.stop()
