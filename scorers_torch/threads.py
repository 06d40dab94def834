"""A process-wide thread pool for image decoding and resizing: PIL releases the
GIL there, and one thread cannot feed a GPU that scores hundreds of pairs a second."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1))
    return list(_POOL.map(fn, items))
