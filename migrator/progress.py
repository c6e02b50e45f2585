"""Drawing progress from Stats; the engine never draws.

On a TTY: tqdm bars for messages and bytes (rate, ETA). Without a TTY: one
plain line every few seconds (cron, logs). --quiet: nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from migrator.stats import Stats


class Progress:
    def __init__(self, stats: Stats, quiet: bool = False, interval: float | None = None, stream=None):
        self.stats = stats
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        if interval is None:
            # MIGRATOR_PROGRESS_INTERVAL: seconds between plain lines (tests use a short one).
            interval = float(os.environ.get("MIGRATOR_PROGRESS_INTERVAL") or (0.2 if self.tty else 5.0))
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said = 0  # throttle waits already said

    def __enter__(self) -> Progress:
        if not self.quiet:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop drawing (again: nothing)."""
        self._stop.set()
        if self._thread:
            self._thread.join(2)

    def _say_waits(self, write) -> None:
        """One line for each pause a server asked for (governor.Wait), as it starts."""
        waits = self.stats.waits[self._said:]
        self._said += len(waits)
        for w in waits:
            write(w.line())

    def _waiting(self) -> str:
        """While every connection to a host waits out a throttle: for how long still, and why."""
        now = self.stats.waiting()
        if now is None:
            return ""
        left, w = now
        return f"waiting {left:.0f} s: {w.side} {w.host} throttled"

    def _snapshot(self) -> tuple[int, int, int, int, int]:
        s = self.stats
        done = s.total("copied") + s.total("found") + len(s.failures)
        return done, s.total("planned"), s.total("copied_bytes"), s.total("planned_bytes"), len(s.folders)

    def _loop(self) -> None:
        if self.tty:
            self._draw_bars()
        else:
            self._print_lines()

    def _draw_bars(self) -> None:
        """Overall bars (messages, bytes), plus one bar per folder while it is being copied."""
        from tqdm import tqdm

        msgs = tqdm(total=0, unit="msg", desc="messages", file=self.stream, position=0, leave=True)
        data = tqdm(total=0, unit="B", unit_scale=True, desc="bytes   ", file=self.stream, position=1, leave=True)
        folder_bars: dict[str, tqdm] = {}
        try:
            while True:
                stopped = self._stop.wait(self.interval)
                self._say_waits(lambda line: tqdm.write(line, file=self.stream))
                done, total, done_b, total_b, folders = self._snapshot()
                msgs.total, data.total = total, total_b
                msgs.n, data.n = done, done_b
                waiting = self._waiting()
                msgs.set_postfix_str(f"{folders} folders" + (f", {waiting}" if waiting else ""), refresh=False)
                msgs.refresh()
                data.refresh()
                for name, (f_done, f_total) in self._folders().items():
                    bar = folder_bars.get(name)
                    if bar is None and f_done < f_total and len(folder_bars) < 4:
                        bar = folder_bars[name] = tqdm(total=f_total, unit="msg", desc=f"  {name[-30:]}",
                                                       file=self.stream, position=2 + len(folder_bars), leave=False)
                    if bar is not None:
                        bar.n = f_done
                        bar.refresh()
                        if f_done >= f_total:
                            bar.close()
                            del folder_bars[name]
                if stopped:
                    return
        finally:
            for bar in folder_bars.values():
                bar.close()
            msgs.close()
            data.close()

    def _folders(self) -> dict[str, tuple[int, int]]:
        with self.stats._lock:
            return {name: (fc.copied + fc.found + fc.failed, fc.planned)
                    for name, fc in self.stats.folders.items() if fc.planned}

    def _print_lines(self) -> None:
        last, due = None, time.monotonic() + self.interval
        while not self._stop.wait(min(self.interval, 0.5)):  # a wait is said within half a second
            self._say_waits(lambda line: print(line, file=self.stream, flush=True))
            if time.monotonic() < due:
                continue
            due = time.monotonic() + self.interval
            done, total, done_b, total_b, folders = self._snapshot()
            waiting = self._waiting()
            if (done, total) == last and not waiting:
                continue
            last = (done, total)
            elapsed = self.stats.elapsed()
            rate = done / elapsed if elapsed else 0.0
            print(
                f"progress: {done}/{total} messages, {done_b / 1e6:.1f}/{total_b / 1e6:.1f} MB, "
                f"{folders} folders, {rate:.0f} msgs/s, {time.strftime('%H:%M:%S')}"
                + (f", {waiting}" if waiting else ""),
                file=self.stream,
                flush=True,
            )
