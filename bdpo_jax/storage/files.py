"""Files by path or URL, the same way on a local disk and in object storage:
paths, listing, reading, writing whole files, moving and removing.

A file is written whole or not at all: locally under a temporary sibling name
(``temporary_name``: one per host, process and thread), then renamed; in an
object store in one upload. ``remove_stale_temporaries`` clears what writers
that died left behind.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec

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


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (as a string); a URL as it is."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


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


def stored_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """Every object under a directory in an object store, by its path relative to
    it, with the checksum the store keeps (GCS: crc32c, S3: ETag; else the size):
    one listing, no data read."""
    keys = ("crc32c", "ETag", "etag", "size")
    details = file_details(directory).items()
    return {name: str(next(info[k] for k in keys if info.get(k) is not None)) for name, info in details}


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
    for fs, indices, stripped in group_by_filesystem(paths):
        chunks = fs.cat_ranges(stripped, [None] * len(stripped), [None] * len(stripped), on_error="return")
        out.extend(zip(indices, chunks, strict=True))
    return [chunk for _, chunk in sorted(out, key=lambda item: item[0])]


def group_by_filesystem(
    paths: Sequence[str | os.PathLike],
) -> list[tuple[fsspec.AbstractFileSystem, list[int], list[str]]]:
    """Paths grouped by the file system instance that serves them: (fs, positions, stripped paths)."""
    groups: dict[int, tuple[fsspec.AbstractFileSystem, list[int], list[str]]] = {}
    for k, path in enumerate(paths):
        fs, stripped = filesystem(path)
        group = groups.setdefault(id(fs), (fs, [], []))
        group[1].append(k)
        group[2].append(stripped)
    return list(groups.values())


def temporary_name(name: str) -> str:
    """A sibling name for writing ``name`` that no other writer (thread, process or host) uses."""
    return f".{name}.tmp-{HOST}-{os.getpid()}-{threading.get_ident()}"


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


def remove(path: str | os.PathLike) -> None:
    """Removes a file or a whole directory; nothing if it is not there."""
    fs, p = filesystem(path)
    fs.invalidate_cache(p)
    if fs.exists(p):
        fs.rm(p, recursive=True)


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
        if process_alive(int(match["pid"] or match["old_pid"])):
            continue
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        removed.append(name)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
