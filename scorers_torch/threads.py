"""Threads on the host: a process-wide pool for image decoding and resizing (PIL
releases the GIL there, and one thread cannot feed a GPU that scores hundreds of
pairs a second), and torch's CPU threads for a block of work."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1))
    return list(_POOL.map(fn, items))


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``count`` inside the block (None or 0: unchanged), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
