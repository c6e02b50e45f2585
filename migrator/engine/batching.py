"""Cutting work into pieces bounded by bytes and count: this is what bounds memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def _own_size(m: Any) -> int:
    return m.size


def batches(metas: Sequence[T], max_bytes: int, max_count: int,
            size: Callable[[T], int] = _own_size) -> Iterator[list[T]]:
    """Consecutive groups of at most max_count messages and max_bytes bytes (`size` tells an
    item's bytes: its .size by default).

    A message larger than max_bytes travels alone: it cannot be split.
    """
    batch: list[T] = []
    total = 0
    for m in metas:
        n = size(m)
        if batch and (len(batch) >= max_count or total + n > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(m)
        total += n
    if batch:
        yield batch


def chunks(metas: Sequence[T], count: int, max_bytes: int) -> list[list[T]]:
    """Split one folder's work into pieces that different workers can take."""
    return list(batches(metas, max_bytes, count))


def one_batch(metas: Sequence[T], max_bytes: int, max_count: int) -> bool:
    """Whether batches() would make exactly one batch of these."""
    return sum(1 for _ in batches(metas, max_bytes, max_count)) == 1
