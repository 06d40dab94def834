"""``.npy`` arrays read by rows without reading them whole: locally
memory-mapped; in an object store the header is parsed once, then only the
bytes of the rows asked for are fetched (ranged reads: fsspec's read-ahead
cache for contiguous rows, one concurrent batch of ranges for scattered ones).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from bdpo_jax.storage.files import filesystem, group_by_filesystem, is_local, read_bytes

DEFAULT_BLOCK_SIZE = 8 * 2**20  # read-ahead per request: 128 SD1.5 latents of 64 KiB
HEADER_PROBE = 4096  # bytes read for a .npy header (numpy writes 128 for the cache's arrays)


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` file's header says: its array's shape and dtype, and where the data begins."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def file_size(self) -> int:
        """The size of a whole file with this header."""
        return self.offset + self.dtype.itemsize * math.prod(self.shape)


def parse_npy_header(data: bytes, url: str = "") -> NpyHeader | int:
    """The header at the start of a ``.npy`` file's bytes, or, if ``data`` ends
    inside it, how many bytes it needs. ValueError for what is not a .npy header."""
    if len(data) < 12:
        if len(data) >= 6 and data[:6] != b"\x93NUMPY":
            raise ValueError(f"{url}: not a .npy file")
        return 12
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError as e:
        raise ValueError(f"{url}: not a .npy file ({e})") from None
    if version == (1, 0):
        need = 10 + int.from_bytes(data[8:10], "little")
        read_header = np.lib.format.read_array_header_1_0
    elif version == (2, 0):
        need = 12 + int.from_bytes(data[8:12], "little")
        read_header = np.lib.format.read_array_header_2_0
    else:
        raise ValueError(f"{url}: .npy format version {version} is not read here (1.0 and 2.0 are)")
    if len(data) < need:
        return need
    try:
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"{url}: damaged .npy header ({e})") from None
    return NpyHeader(tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran_order), stream.tell())


def read_npy_headers(paths: Sequence[str | os.PathLike]) -> list[NpyHeader]:
    """The headers of many ``.npy`` files, fetched together: a few KiB of each (one
    concurrent batch of ranged reads in an object store), never the arrays."""
    paths = [os.fspath(p) for p in paths]
    found: list[NpyHeader | None] = [None] * len(paths)
    need = [HEADER_PROBE] * len(paths)
    todo = list(range(len(paths)))
    while todo:
        for fs, positions, stripped in group_by_filesystem([paths[i] for i in todo]):
            ends = [need[todo[k]] for k in positions]
            chunks = fs.cat_ranges(stripped, [0] * len(stripped), ends, on_error="return")
            for k, chunk, end in zip(positions, chunks, ends, strict=True):
                if isinstance(chunk, BaseException):
                    raise chunk
                i = todo[k]
                header = parse_npy_header(chunk, paths[i])
                if isinstance(header, NpyHeader):
                    found[i] = header
                elif len(chunk) < end:
                    raise ValueError(f"{paths[i]}: the file ends inside its .npy header")
                else:
                    need[i] = header
        todo = [i for i in todo if found[i] is None]
    return found  # type: ignore[return-value]


def open_array(
    path: str | os.PathLike,
    block_size: int = DEFAULT_BLOCK_SIZE,
    cache_type: str = "readahead",
    header: NpyHeader | None = None,
) -> np.ndarray | RemoteArray:
    """A ``.npy`` file indexed by rows without reading it whole: a read-only
    memory map when local, a ``RemoteArray`` in an object store. ``header``: one
    already read (``read_npy_headers``), so that opening makes no request."""
    if is_local(path):
        return np.load(filesystem(path)[1], mmap_mode="r", allow_pickle=False)
    return RemoteArray(path, block_size=block_size, cache_type=cache_type, header=header)


class RemoteArray:
    """A ``.npy`` object read by rows (the first axis) through ranged reads.

    ``a[i]``, ``a[i:j]``, ``a[[i, k, ...]]`` and ``np.asarray(a)`` return numpy
    arrays. Contiguous rows go through one file handle with fsspec's read-ahead
    cache (``block_size`` bytes per request); a list of rows is fetched as one
    concurrent batch of byte ranges (adjacent rows merged), and ``take_rows``
    fetches the rows of several arrays in one batch. Safe to share between threads.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_type: str = "readahead",
        header: NpyHeader | None = None,
    ):
        self.url = os.fspath(path)
        self._fs, self._path = filesystem(path)
        self._block_size, self._cache_type = block_size, cache_type
        self._file: Any = None  # opened on the first read of contiguous rows
        self._lock = threading.Lock()
        header = header or read_npy_headers([self.url])[0]
        if header.dtype.hasobject:
            raise ValueError(f"{self.url}: object arrays cannot be read by rows")
        if header.fortran_order and len(header.shape) > 1:
            raise ValueError(f"{self.url}: a Fortran-ordered array has no contiguous rows; save it C-ordered")
        if not header.shape:
            raise ValueError(f"{self.url}: a 0-d array has no rows")
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        self.row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _from_bytes(self, data: bytes, rows: int) -> np.ndarray:
        return np.frombuffer(data, self.dtype, count=rows * math.prod(self.shape[1:])).reshape(rows, *self.shape[1:])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the array), through the read-ahead cache."""
        start, stop = max(start, 0), min(max(stop, start), len(self))
        with self._lock:
            if self._file is None:
                self._file = self._fs.open(self._path, "rb", block_size=self._block_size, cache_type=self._cache_type)
            self._file.seek(self.offset + start * self.row_bytes)
            data = self._file.read((stop - start) * self.row_bytes)
        if len(data) < (stop - start) * self.row_bytes:
            raise ValueError(f"{self.url} is truncated: rows {start}:{stop} are not all there")
        return self._from_bytes(data, stop - start).copy()

    def _ranges(self, indices: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
        """The distinct rows asked for, and the byte ranges of their runs."""
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"{self.url}: row index out of range for {len(self)} rows")
        unique = np.unique(indices)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        runs = [(int(run[0]), int(run[-1]) + 1) for run in np.split(unique, breaks)] if unique.size else []
        starts = [self.offset + a * self.row_bytes for a, _ in runs]
        return unique, starts, [self.offset + b * self.row_bytes for _, b in runs]

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows at ``indices`` (any order, repeats allowed), in one batch of ranged reads."""
        return take_rows([(self, indices)])[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"{self.url}: row {key} out of range for {len(self)} rows")
            out = self.rows(i, i + 1)[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            out = self.rows(start, stop)[::step] if step > 0 else self.take(np.arange(start, stop, step))
        else:
            key = np.asarray(key)
            out = self.take(np.flatnonzero(key) if key.dtype == bool else key)
        if not rest:
            return out
        return out[rest] if isinstance(key, (int, np.integer)) else out[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.rows(0, len(self))
        return array if dtype is None else array.astype(dtype)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __repr__(self) -> str:
        return f"RemoteArray({self.url!r}, shape={self.shape}, dtype={self.dtype})"


def take_rows(requests: Sequence[tuple[np.ndarray | RemoteArray, Sequence[int] | np.ndarray]]) -> list[np.ndarray]:
    """``array[indices]`` for each (array, indices), the remote ones' rows fetched
    in one concurrent batch of ranged reads per file system: a train batch's
    latents and text states from every shard it touches cost one round trip."""
    out: list[np.ndarray | None] = [None] * len(requests)
    plans: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # request, indices, unique rows, ranges
    paths: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for i, (array, indices) in enumerate(requests):
        indices = np.asarray(indices, np.int64).reshape(-1)
        if not isinstance(array, RemoteArray):
            out[i] = np.asarray(array[indices])
            continue
        indices = np.where(indices < 0, indices + len(array), indices)
        unique, range_starts, range_ends = array._ranges(indices)
        plans.append((i, indices, unique, len(range_starts)))
        paths += [array.url] * len(range_starts)
        starts += range_starts
        ends += range_ends
    chunks: list[Any] = [None] * len(paths)
    for fs, positions, stripped in group_by_filesystem(paths):
        got = fs.cat_ranges(stripped, [starts[k] for k in positions], [ends[k] for k in positions], on_error="return")
        for k, chunk in zip(positions, got, strict=True):
            chunks[k] = chunk
    done = 0
    for i, indices, unique, count in plans:
        array = requests[i][0]
        parts = chunks[done : done + count]
        done += count
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        data = b"".join(parts)  # type: ignore[arg-type]
        if len(data) < len(unique) * array.row_bytes:
            raise ValueError(f"{array.url} is truncated: it ends before row {int(unique[-1])}")
        rows = array._from_bytes(data, len(unique))
        out[i] = rows[np.searchsorted(unique, indices)]
    return out  # type: ignore[return-value]


def load_array(path: str | os.PathLike) -> np.ndarray:
    """A whole ``.npy`` file in memory (small arrays: labels, scores, captions' ids)."""
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
