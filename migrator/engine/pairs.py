"""Working on both sides of a copy at once: two connections, two threads.

Neutral ground for the engine, the planner, verify and the runner: nothing here knows any store
implementation (stores/__init__.py holds Connector, which imports them all), only the Store
contract's callables.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from migrator.stores.base import Store


def both_sides(on_src: Callable, on_dst: Callable | None, pool: ThreadPoolExecutor | None = None) -> tuple:
    """(on_src(), on_dst()), on_dst called meanwhile by a helper thread (the pool's, or one of its
    own) on its own connection: the two sides' round trips overlap instead of adding up. If
    either fails, its error is raised once both are done, the source's first."""
    if pool is None:
        with ThreadPoolExecutor(max_workers=1) as own:
            return both_sides(on_src, on_dst, own)
    dst_side = pool.submit(on_dst) if on_dst is not None else None
    try:
        from_src = on_src()
    except BaseException:
        if dst_side is not None:
            dst_side.exception()  # wait for it
        raise
    return from_src, (dst_side.result() if dst_side is not None else None)


def open_pair(open_src: Callable[[], Store], open_dst: Callable[[], Store]) -> tuple[Store, Store]:
    """Open both sides at the same time: on a WAN each login is several round trips.

    If one side fails, the other is closed and the first failure (source first) is raised."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(open_src), pool.submit(open_dst)]
    opened = [f.result() if f.exception() is None else None for f in futures]
    if None in opened:
        for store in opened:
            if store is not None:
                try:
                    store.close()
                except Exception:
                    pass
        for f in futures:
            f.result()  # raises
    return opened[0], opened[1]
