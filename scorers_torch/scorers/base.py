"""The scorer interface and registry.

A scorer maps (image, prompt) pairs to one float each. Configs name scorers by
registry name; each records name, version and weight-file hashes in the cache
manifest, so a cache says exactly which models labelled it.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bdpo_jax.errors import UserError

_REGISTRY: dict[str, type[Scorer]] = {}


class Scorer(abc.ABC):
    name: str = ""
    version: str = "1"

    @abc.abstractmethod
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """One float per (image, prompt); higher is better."""

    def weight_files(self) -> list[Path]:
        """Files whose bytes determine the scores (hashed into the manifest)."""
        return []

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "weights": {str(p): file_sha256(p) for p in self.weight_files()},
        }


def register_scorer(name: str) -> Callable[[type[Scorer]], type[Scorer]]:
    def register(cls: type[Scorer]) -> type[Scorer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"scorer name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def registered_scorers() -> list[str]:
    _import_builtin_scorers()
    return sorted(_REGISTRY)


def build_scorer(name: str, device: str | None = None, **kwargs: Any) -> Scorer:
    """A scorer by registry name; unknown names and arguments are errors that
    list the valid ones. ``device`` goes to the scorers that run on one."""
    _import_builtin_scorers()
    if name not in _REGISTRY:
        raise KeyError(f"unknown scorer {name!r}; registered: {sorted(_REGISTRY)}")
    cls = _REGISTRY[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if device is not None and "device" in accepted:
        kwargs["device"] = device
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"scorer {name!r} takes no argument(s) {unknown}; it takes {sorted(accepted)}")
    return cls(**kwargs)


SCORER_PLUGINS = "bdpo.scorers"  # entry-point group: a package's module that registers scorers when imported


def _import_builtin_scorers() -> None:
    """Ours, and those of installed packages that name a module in the ``bdpo.scorers``
    entry-point group (the small world's, ``world.scorers``, is one: this package does not import it)."""
    from importlib.metadata import entry_points

    from scorers_torch.scorers import clip_scorers  # noqa: F401  (registration)

    for plugin in entry_points(group=SCORER_PLUGINS):
        plugin.load()


HUB_PREFIX = "hf://"


class WeightFileError(UserError, FileNotFoundError):
    """A scorer's weight file is not given, not there, or not fetchable."""


def require_file(path: str | os.PathLike | None, what: str, source: str) -> Path:
    """A weight file or folder that must exist: a local path, or
    ``hf://org/repo/file`` (``hf://org/repo`` for a whole repo) fetched from the
    hub where this machine can reach it. Errors name the file and its source."""
    if path is None:
        raise WeightFileError(f"{what}: no weight file given. Download it from {source} and pass its path.")
    if str(path).startswith(HUB_PREFIX):
        return _from_hub(str(path)[len(HUB_PREFIX) :], what, source)
    path = Path(path).expanduser()
    if not path.is_file() and not path.is_dir():
        raise WeightFileError(f"{what}: weight file {path} does not exist. It comes from {source}.")
    return path


def _from_hub(spec: str, what: str, source: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    parts = spec.split("/")
    if len(parts) < 2:
        raise ValueError(f"{what}: {HUB_PREFIX}{spec} is not {HUB_PREFIX}org/repo[/file]")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        if filename:
            return Path(hf_hub_download(repo_id, filename))
        return Path(snapshot_download(repo_id))
    except Exception as e:  # offline, unknown repo or file, no access
        raise WeightFileError(
            f"{what}: could not fetch {HUB_PREFIX}{spec} from the hub ({type(e).__name__}). It comes from {source}; "
            "download it where the hub is reachable and pass the local path."
        ) from e


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file, or of a directory's files in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()
