"""A train work directory's guards: one run at a time, and a resume with the config it started with.

- ``run.lock`` (JSON: host, pid) is created by process 0 of a run and removed
  when it ends; a second run there is refused, naming the holder. A lock left
  by a dead process on this host is taken over with a warning (one on another
  host cannot be checked: the message says how to remove it). Creating it is
  atomic locally (``O_EXCL``) and in GCS (an upload that succeeds only if no
  object of that name exists, ``storage.create_exclusive``): of two runs
  started together in one workdir, exactly one gets it. Taking over a dead
  process's lock is not atomic (a remove, then a create). The evaluation
  locks its output folder alike, one lock per worker.
- ``config.json`` is the config of the run. A resumed run may change only
  ``RESUMABLE_KEYS`` (how long, how often it saves and logs, how it is laid out
  on devices; not how long under a decaying learning rate); any other change
  alters the data or the model, and is an error listing the keys unless
  explicitly allowed, in which case the old config is kept beside the new one.
  A key added to the project after a run was saved is read, for that run, as
  its ``KEYS_ADDED_LATER`` value (the one that reproduces the run).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from bdpo_jax import records, storage
from bdpo_jax.errors import UserError
from bdpo_jax.models.unet_files import weight_files

LOCK_NAME = "run.lock"
CONFIG_NAME = "config.json"
# Prefixes of the keys a resumed run may change without altering what it trains on or what it trains.
RESUMABLE_KEYS = ("train.steps", "log_every", "checkpoint.", "data.prefetch", "mesh.", "model.attention", "model.remat")
RESUMABLE_KEYS += ("distributed",)
# Keys added after runs were saved without them, with the value that reproduces those runs.
KEYS_ADDED_LATER = {"optimizer.decay": "constant"}


class WorkdirError(UserError):
    """The work directory cannot be used: locked by another run, not writable."""


class ConfigChangedError(UserError):
    """A resumed run's config changes keys that alter its data or model."""


def acquire_lock(
    workdir: str | os.PathLike, name: str = LOCK_NAME, holder_kind: str = "run", flag: str = "--workdir"
) -> str:
    """Creates ``workdir/name`` for this process, or raises ``WorkdirError`` naming its holder (another
    ``holder_kind``) and the ``flag`` that chooses another folder. Evaluations lock their output folder too."""
    path = storage.join(workdir, name)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            created = storage.create_exclusive(path, json.dumps(me).encode())
        except PermissionError as e:
            raise WorkdirError(f"cannot write in {workdir} ({e}): choose a writable {flag}") from e
        if not created:
            holder = read_lock(path)
            if holder is None:  # being written this instant, or emptied: look again
                time.sleep(0.1)
                holder = read_lock(path) or {"host": "?", "pid": -1}
            if holder.get("host") == me["host"] and not storage.process_alive(int(holder.get("pid", -1))):
                logging.warning("%s: taking over the lock of process %s on %s, which has ended", path, *_who(holder))
                storage.remove(path)
                continue
            pid, host = _who(holder)
            raise WorkdirError(
                f"{workdir} is in use by another {holder_kind}: process {pid} on host {host} (since "
                f"{holder.get('since')}, lock file {path}). Wait for it to end or stop it, or use another {flag}; if "
                f"that process is gone (another host cannot be checked from here), delete {path}."
            )
        return path


def _who(holder: dict) -> tuple[Any, Any]:
    return holder.get("pid"), holder.get("host")


def read_lock(path: str | os.PathLike) -> dict | None:
    try:
        return storage.read_json(path)
    except (OSError, ValueError):
        return None


def release_lock(path: str | os.PathLike) -> None:
    """Removes the lock if it is still this process's."""
    holder = read_lock(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        storage.remove(path)


def config_changes(
    saved: dict, config: ml_collections.ConfigDict, saved_keys_only: bool = False
) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, new value)} of every key whose value differs; ``saved_keys_only``: of the keys
    the saved config has (a key added to the project since, and not in KEYS_ADDED_LATER, is not compared)."""
    old = {**KEYS_ADDED_LATER, **records.flatten(saved)}
    new = records.flatten(json.loads(config.to_json_best_effort()))
    return records.changes(old, new, saved_keys_only=saved_keys_only)


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``key: old -> new; ...``, as the errors and warnings about a changed config list them."""
    return records.describe(changes)


def resumable(key: str, config: ml_collections.ConfigDict) -> bool:
    """Whether a resumed run may change ``key`` and still train what it started to."""
    if key == "train.steps" and config.optimizer.decay != "constant":
        return False  # the decay ends at train.steps: the rate would jump at the resumed step
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_KEYS)


def check_resumed_config(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, start: int, allow_changes: bool
) -> None:
    """Compares the config with the saved one and writes it (process 0's job); see the module docstring."""
    path = storage.join(workdir, CONFIG_NAME)
    text = config.to_json_best_effort(indent=2)
    if start == 0 or not storage.exists(path):
        storage.write_text(path, text)
        return
    changes = config_changes(storage.read_json(path), config)
    altering = {k: v for k, v in changes.items() if not resumable(k, config)}
    listed = describe_changes(changes)
    if altering and not allow_changes:
        keys = describe_changes(altering)
        raise ConfigChangedError(
            f"the run in {workdir} (resumed at step {start}) was trained with another config: {keys}. These keys "
            f"change its data or model. Use a new --workdir, or pass --allow_config_change to resume anyway "
            f"(the saved {CONFIG_NAME} is then kept as config.before-step-{start}.json)."
        )
    if altering:
        kept = storage.join(workdir, f"config.before-step-{start}.json")
        storage.rename(path, kept)
        logging.warning("resuming with a changed config (%s); the previous config is kept in %s", listed, kept)
    elif changes:
        logging.warning("resuming with %s", listed)
    if changes:
        storage.write_text(path, text)


BASE_MODEL_NAME = "base_model.json"
EXPORT_RECORD_NAME = "bdpo_export.json"  # in an export's folder: the run and step it was made from
SAMPLE_BYTES = 4 << 20


def base_fingerprint(unet_dir: Path) -> str:
    """A cheap identity of a base UNet: its config, and each weight file's name, size, first and last 4 MiB
    (a safetensors header names every tensor and its offsets; the samples tell fine-tunes apart)."""
    digest = hashlib.sha256((unet_dir / "config.json").read_bytes())
    for path in sorted(set(weight_files(unet_dir).values())):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            digest.update(f.read(SAMPLE_BYTES))
            f.seek(max(size - SAMPLE_BYTES, 0))
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def record_base_model(workdir: str | os.PathLike, unet_dir: Path) -> None:
    """Process 0, at a run's start: which base UNet it trains (export checks it)."""
    path = storage.join(workdir, BASE_MODEL_NAME)
    if not storage.exists(path):
        storage.write_json(path, {"unet": str(unet_dir), "fingerprint": base_fingerprint(unet_dir)})


def recorded_base_model(workdir: str | os.PathLike) -> dict | None:
    path = storage.join(workdir, BASE_MODEL_NAME)
    return storage.read_json(path) if storage.exists(path) else None
