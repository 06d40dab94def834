"""Files on a local disk or in object storage (``gs://``, ``s3://``, any fsspec
URL), the same way: the cache and evaluation outputs written by the torch side
and read by the JAX side. numpy, json and fsspec only, no JAX or torch, so that
both sides import it.

Object stores have no rename, so a directory is made whole differently there:

- **local:** written into a temporary sibling directory, then renamed into
  place (``os.replace``): it appears whole or not at all;
- **object store:** its objects are written in place, then a ``_COMPLETE``
  marker object last. A single object appears whole or not at all, so a
  directory with the marker is whole; one without it is a killed writer's
  leftovers, which the next writer removes.

The marker is written locally too, so that a directory copied to a bucket
(``gcloud storage cp -r``) is still known to be whole.

Arrays are ``.npy`` files read by rows: locally memory-mapped; in an object
store the header is parsed once, then only the bytes of the rows asked for are
fetched (ranged reads: fsspec's read-ahead cache for contiguous rows, one
concurrent batch of ranges for scattered ones), never the whole file.

Credentials and endpoints come from the file system libraries (gcsfs: Google
application-default credentials; s3fs: the AWS environment and config), or
fsspec's config, e.g. ``FSSPEC_S3_ENDPOINT_URL=http://host:9000`` for MinIO.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import posixpath
import re
import shutil
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from bdpo_jax.errors import UserError

COMPLETE_MARKER = "_COMPLETE"
DEFAULT_BLOCK_SIZE = 8 * 2**20  # read-ahead per request: 128 SD1.5 latents of 64 KiB
HEADER_PROBE = 4096  # bytes read for a .npy header (numpy writes 128 for the cache's arrays)
HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
# A writer's temporary names: ".NAME.tmp-HOST-PID-THREAD", or ".NAME.tmp-PID" (format 1 caches).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<host>.+)-(?P<pid>\d+)-\d+|(?P<old_pid>\d+))$")


def filesystem(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of a path or URL, and the path within it."""
    return fsspec.core.url_to_fs(os.fspath(path))


def is_local(path: str | os.PathLike) -> bool:
    fs, _ = filesystem(path)
    return isinstance(fs, fsspec.implementations.local.LocalFileSystem)


def join(path: str | os.PathLike, *parts: str) -> str:
    """``path/part/...`` for local paths and URLs alike."""
    path = os.fspath(path)
    if "://" in path:
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def split(path: str | os.PathLike) -> tuple[str, str]:
    """(parent, name) of a local path or a URL (``gs://b/run/ckpt/5`` -> ``gs://b/run/ckpt``, ``5``)."""
    path = os.fspath(path).rstrip("/")
    return posixpath.split(path) if "://" in path else os.path.split(path)


def exists(path: str | os.PathLike) -> bool:
    fs, p = filesystem(path)
    fs.invalidate_cache(p)  # listings are cached by gcsfs and s3fs; other processes write
    return fs.exists(p)


def list_names(path: str | os.PathLike) -> list[str]:
    """Names in a directory (objects and prefixes), sorted; [] if there is none."""
    fs, p = filesystem(path)
    fs.invalidate_cache(p)
    try:
        entries = fs.ls(p, detail=False)
    except FileNotFoundError:
        return []
    names = {posixpath.basename(e.rstrip("/")) for e in entries}
    return sorted(n for n in names if n)


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, p = filesystem(path)
    return fs.cat_file(p)


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_bytes(path))


def read_many(paths: Sequence[str | os.PathLike]) -> list[bytes | BaseException]:
    """Whole files, fetched together (concurrently in an object store); a file that
    cannot be read gives its exception in its place."""
    out: list[bytes | BaseException] = []
    for fs, indices, stripped in _by_filesystem(paths):
        chunks = fs.cat_ranges(stripped, [None] * len(stripped), [None] * len(stripped), on_error="return")
        out.extend(zip(indices, chunks, strict=True))
    return [chunk for _, chunk in sorted(out, key=lambda item: item[0])]


def file_details(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every file under a directory, by its path relative to it, with what the file
    system says of it: one recursive listing (a few list requests in a bucket)."""
    fs, p = filesystem(directory)
    fs.invalidate_cache(p)
    try:
        found = fs.find(p, detail=True)
    except FileNotFoundError:
        return {}
    prefix = p.rstrip("/") + "/"
    return {f[len(prefix) :]: info for f, info in found.items() if f.startswith(prefix)}


def file_sizes(directory: str | os.PathLike) -> dict[str, int]:
    """Every file under a directory with its size in bytes (see ``file_details``)."""
    return {name: int(info.get("size") or 0) for name, info in file_details(directory).items()}


def temporary_name(name: str) -> str:
    """A sibling name for writing ``name`` that no other writer (thread, process or host) uses."""
    return f".{name}.tmp-{HOST}-{os.getpid()}-{threading.get_ident()}"


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Removes the temporary files and folders that writers on this host left
    when they died (their process is gone), and returns their names. Object stores
    have none: there, objects are written in place."""
    if not is_local(directory) or not os.path.isdir(filesystem(directory)[1]):
        return []
    root = filesystem(directory)[1]
    removed = []
    for name in sorted(os.listdir(root)):
        match = _TEMPORARY.match(name)
        if match is None or match["host"] not in (None, HOST):
            continue
        if _process_alive(int(match["pid"] or match["old_pid"])):
            continue
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        removed.append(name)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class StorageLocationError(UserError):
    """A path on a storage that the part of the project asked to write there cannot use."""


CHECKPOINT_PROTOCOLS = ("file", "local", "gs", "gcs")  # where orbax's arrays go (tensorstore's file and gcs drivers)


def checkpoint_location_problem(workdir: str | os.PathLike) -> str | None:
    """Why orbax cannot checkpoint under ``workdir``, or None. orbax 0.12 gives
    tensorstore its gcs driver for gs:// and its file driver for every other
    path, so an s3:// checkpoint fails ("Checkpoint path should be absolute")
    after its first metadata object is written: refused before anything loads."""
    protocol = str(workdir).split("://", 1)[0] if "://" in str(workdir) else "file"
    if protocol in CHECKPOINT_PROTOCOLS:
        return None
    return (
        f"workdir {workdir}: orbax checkpoints only to a local (or shared) path or gs://, not {protocol}://; "
        f"give a gs:// or local workdir, or mount the bucket (mountpoint-s3, s3fs-fuse) and give its mount "
        f"point (the cache and the evaluation output may stay in {protocol}://)"
    )


def check_checkpoint_location(workdir: str | os.PathLike) -> None:
    """``checkpoint_location_problem`` as an error, for a train command's config check."""
    if problem := checkpoint_location_problem(workdir):
        raise StorageLocationError(problem)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (as a string); a URL as it is."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def create_exclusive(path: str | os.PathLike, data: bytes) -> bool:
    """Creates a file only if there is none: True if this call made it.

    Atomic where the store offers it: locally ``O_EXCL``; in GCS an upload with
    ``ifGenerationMatch=0``, in S3 with ``If-None-Match: *`` (gcsfs and s3fs
    ``mode="create"``), so of writers racing for one name exactly one wins. The
    existence check before the upload refuses a later writer even where a store
    ignores the precondition (gcp-storage-emulator does)."""
    fs, p = filesystem(path)
    if is_local(path):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if exists(path):
        return False
    try:
        fs.pipe_file(p, data, mode="create")
    except FileExistsError:
        return False
    return True


def rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves a file or a directory; in an object store its objects are copied, then deleted."""
    fs, s = filesystem(source)
    if is_local(source):
        os.replace(s, filesystem(target)[1])
        return
    fs.invalidate_cache(s)
    files = fs.find(s)  # objects only: a "directory" is a prefix, not an object to copy
    if not files:
        raise FileNotFoundError(f"{source}: nothing to move")
    t = filesystem(target)[1].rstrip("/")
    for f in files:
        fs.copy(f, t + f[len(s.rstrip("/")) :])
    fs.rm(files)
    fs.invalidate_cache()


def append_text(path: str | os.PathLike, text: str) -> None:
    """Adds text at the end of a file. Objects cannot be appended to: there the
    object is read and written again whole (for small files: a run's metrics)."""
    if is_local(path):
        p = filesystem(path)[1]
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a") as f:
            f.write(text)
        return
    write_text(path, (read_text(path) if exists(path) else "") + text)


def stored_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """Every object under a directory in an object store, by its path relative to
    it, with the checksum the store keeps (GCS: crc32c, S3: ETag; else the size):
    one listing, no data read."""
    keys = ("crc32c", "ETag", "etag", "size")
    details = file_details(directory).items()
    return {name: str(next(info[k] for k in keys if info.get(k) is not None)) for name, info in details}


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Whole or not at all: a local file through a temporary file and a rename;
    an object in one upload (object stores never show half an object)."""
    fs, p = filesystem(path)
    if is_local(path):
        target = Path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(temporary_name(target.name))
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        fs.pipe_file(p, data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def remove(path: str | os.PathLike) -> None:
    """Removes a file or a whole directory; nothing if it is not there."""
    fs, p = filesystem(path)
    fs.invalidate_cache(p)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether a directory was written whole by ``atomic_directory``."""
    return exists(join(directory, COMPLETE_MARKER))


def complete_children(directory: str | os.PathLike) -> list[str]:
    """Names of the subdirectories written whole (for a cache: its finished shards), from one
    recursive listing (a few list requests in a bucket, not one per subdirectory)."""
    fs, p = filesystem(directory)
    fs.invalidate_cache(p)
    try:
        files = fs.find(p, maxdepth=2)
    except FileNotFoundError:
        return []
    prefix = p.rstrip("/") + "/"
    parts = (f[len(prefix) :].split("/") for f in files if f.startswith(prefix))
    return sorted({part[0] for part in parts if len(part) == 2 and part[1] == COMPLETE_MARKER})


class DirectoryWriter:
    """Files of a directory being written; see ``atomic_directory``."""

    def __init__(self, root: str):
        self.root = root
        self.written: set[str] = set()

    def path(self, name: str) -> str:
        self.written.add(name)
        return join(self.root, name)

    def write_bytes(self, name: str, data: bytes) -> None:
        fs, p = filesystem(self.path(name))
        fs.pipe_file(p, data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_json(self, name: str, value: Any) -> None:
        self.write_text(name, json.dumps(value, indent=1))

    def save_array(self, name: str, array: np.ndarray) -> None:
        """``name.npy`` in numpy's format, streamed (no second copy in memory)."""
        fs, p = filesystem(self.path(f"{name}.npy"))
        with fs.open(p, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, overwrite: bool = False) -> Iterator[DirectoryWriter]:
    """Writes a directory that readers see whole or not at all.

    ``with atomic_directory(path) as d: d.save_array("latents", x); d.write_json("stats.json", s)``.
    A whole directory already there is an error unless ``overwrite``; one that
    another writer makes whole while this block runs (two identical jobs) is
    kept, and this block's copy dropped. A killed writer's leftovers never count
    as whole: locally they are a temporary folder (``remove_stale_temporaries``),
    in an object store objects without the marker, which the next writer
    overwrites or removes. Objects are written in place, not removed first, so
    that two writers of the same directory never delete each other's objects.
    """
    directory = os.fspath(directory)
    if is_complete(directory) and not overwrite:
        raise FileExistsError(f"{directory} is already written whole")
    fs, p = filesystem(directory)
    if is_local(directory):
        target = Path(p)
        tmp = target.with_name(temporary_name(target.name))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield DirectoryWriter(str(tmp))
            (tmp / COMPLETE_MARKER).write_bytes(b"")
            if target.exists() and (overwrite or not is_complete(target)):
                shutil.rmtree(target)  # the old version, or something not written whole
            try:
                os.replace(tmp, target)
            except OSError as e:  # another writer's whole copy was renamed in meanwhile: it stands
                if overwrite or e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not is_complete(target):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    marker = join(directory, COMPLETE_MARKER)
    if overwrite:
        remove(marker)
    writer = DirectoryWriter(directory)
    yield writer  # if the block raises, its objects stay without the marker: not whole
    if not overwrite and is_complete(directory):
        return  # another writer finished first; its objects are the same
    for name in list_names(directory):  # a killed writer's objects that this one did not write
        if name not in writer.written and name != COMPLETE_MARKER:
            remove(join(directory, name))
    fs.pipe_file(filesystem(marker)[1], b"")


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
        for fs, positions, stripped in _by_filesystem([paths[i] for i in todo]):
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
    for fs, positions, stripped in _by_filesystem(paths):
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


def _by_filesystem(paths: Sequence[str | os.PathLike]) -> list[tuple[fsspec.AbstractFileSystem, list[int], list[str]]]:
    """Paths grouped by the file system instance that serves them: (fs, positions, stripped paths)."""
    groups: dict[int, tuple[fsspec.AbstractFileSystem, list[int], list[str]]] = {}
    for k, path in enumerate(paths):
        fs, stripped = filesystem(path)
        group = groups.setdefault(id(fs), (fs, [], []))
        group[1].append(k)
        group[2].append(stripped)
    return list(groups.values())


def load_array(path: str | os.PathLike) -> np.ndarray:
    """A whole ``.npy`` file in memory (small arrays: labels, scores, captions' ids)."""
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
