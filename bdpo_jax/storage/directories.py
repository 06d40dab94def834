"""Directories that readers see whole or not at all (a cache's shards).

Object stores have no rename, so a directory is made whole differently there:

- **local:** written into a temporary sibling directory, then renamed into
  place (``os.replace``): it appears whole or not at all;
- **object store:** its objects are written in place, then a ``_COMPLETE``
  marker object last. A single object appears whole or not at all, so a
  directory with the marker is whole; one without it is a killed writer's
  leftovers, which the next writer removes.

The marker is written locally too, so that a directory copied to a bucket
(``gcloud storage cp -r``) is still known to be whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bdpo_jax.storage.files import exists, filesystem, is_local, join, list_names, remove, temporary_name

COMPLETE_MARKER = "_COMPLETE"


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
