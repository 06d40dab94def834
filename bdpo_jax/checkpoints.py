"""Checkpoints of the train state, damaged ones set aside, and stopping on a
signal at one step on every host.

A checkpoint is the whole ``TrainState`` (the data position is its step), so a
run in a workdir with checkpoints resumes exactly. Process 0 records a CRC of
every file of a finished checkpoint (``STEP/bdpo_checksum.json``); a resumed
run restores the newest checkpoint that matches its record and restores
without error, and moves damaged ones aside (``damaged-STEP``) with a warning. A LoRA run's state holds the
adapters, not the base they add to: ``base_model.json`` in the workdir names
the base (``bdpo_jax.workdir``), so it is checked, not copied.

The workdir may be a gs:// URL (orbax writes through etils.epath and
tensorstore's gcs driver; ``TENSORSTORE_GCS_HTTP_URL`` points it at an
emulator). There orbax writes a step in place and marks it finished with
``commit_success.txt``, and the checksum record holds the store's own CRC32C
of each object, read from one listing rather than by downloading the
checkpoint. Elsewhere in object storage orbax cannot checkpoint: such a
workdir is refused before anything loads (``check_checkpoint_location``).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from bdpo_jax import storage
from bdpo_jax.errors import Interrupted, UserError  # Interrupted: the trainer's, JAX-free for the boundary

CHECKSUM_NAME = "bdpo_checksum.json"
COMMIT_NAME = "commit_success.txt"  # orbax's mark of a finished step where it cannot rename (a bucket)


class CheckpointError(UserError):
    """No checkpoint of a workdir that has some can be restored."""


class CheckpointLocationError(UserError):
    """A workdir on a storage that orbax cannot checkpoint to."""


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
        raise CheckpointLocationError(problem)


# orbax writes an array replicated on several devices cooperatively, each replica a slice of it
# (replica-parallel), slicing it on the device first: a compiled slice per shape, and a transfer per
# slice. A slice smaller than this is not worth it: under FSDP the replicated arrays are the biases and
# norms (KBs), while the kernels are sharded. Side by side on 4 CPU devices (the tests' micro UNet, 832
# of 836 arrays replicated): saves of 12.8, 5.7, 5.7 s without a minimum, 2.9, 2.6, 2.4 s with it.
MIN_REPLICA_SLICE_BYTES = 1 << 20


@functools.cache
def _register_array_handler() -> None:
    """orbax's handler of jax.Array, with ``MIN_REPLICA_SLICE_BYTES``: registered once per process."""
    import orbax.checkpoint as ocp

    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def manager(workdir: str | os.PathLike, config: ml_collections.ConfigDict):
    import orbax.checkpoint as ocp

    _register_array_handler()
    return ocp.CheckpointManager(
        storage.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep, enable_async_checkpointing=config.checkpoint.async_save
        ),
    )


def step_dirs(directory: str | os.PathLike) -> dict[int, str]:
    """Finished checkpoints by step: orbax renames a local checkpoint to its step
    once written; in a bucket it writes the step in place, then ``COMMIT_NAME``."""
    if storage.is_local(directory):
        root = Path(directory)
        if not root.is_dir():
            return {}
        return {int(p.name): str(p) for p in root.iterdir() if p.name.isdigit() and p.is_dir()}
    steps = {int(n): storage.join(directory, n) for n in storage.list_names(directory) if n.isdigit()}
    return {step: path for step, path in steps.items() if storage.exists(storage.join(path, COMMIT_NAME))}


def file_crcs(step_dir: str | os.PathLike) -> dict[str, str]:
    """Every file's checksum: a CRC32 of its bytes locally; the store's own checksum of each object in a bucket."""
    if not storage.is_local(step_dir):
        return {k: v for k, v in storage.stored_checksums(step_dir).items() if k != CHECKSUM_NAME}
    step_dir = Path(step_dir)
    crcs = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUM_NAME):
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        crcs[str(path.relative_to(step_dir))] = f"{crc:08x}"
    return crcs


def record_checksums(directory: str | os.PathLike, below: int | None = None) -> None:
    """Process 0: a checksum file for each finished checkpoint (of a step below ``below``) without one."""
    if jax.process_index() != 0:
        return
    for step, path in step_dirs(directory).items():
        record = storage.join(path, CHECKSUM_NAME)
        if (below is None or step < below) and not storage.exists(record):
            storage.write_text(record, json.dumps(file_crcs(path), indent=0))


def damage(step_dir: str | os.PathLike) -> str | None:
    """What differs from the checkpoint's checksum record; None if intact or unrecorded."""
    record = storage.join(step_dir, CHECKSUM_NAME)
    if not storage.exists(record):
        return None
    try:
        expected = storage.read_json(record)
    except ValueError:
        return f"its checksum record {record} is unreadable"
    found = file_crcs(step_dir)
    changed = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    return f"{len(changed)} file(s) differ from their checksum ({', '.join(changed[:3])})" if changed else None


def set_aside(step_dir: str | os.PathLike, why: str) -> None:
    """Process 0 moves a damaged checkpoint out of orbax's sight (nothing is deleted)."""
    parent, step = storage.split(step_dir)
    aside = storage.join(parent, f"damaged-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    logging.warning("checkpoint step %s in %s is damaged (%s): moved to %s", step, parent, why, aside)
    print(f"warning: checkpoint of step {step} is damaged ({why}); moved to {aside}", flush=True)
    if jax.process_index() == 0:
        storage.rename(step_dir, aside)


def restore_latest(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, state: Any, shardings: Any
) -> tuple[Any, Any]:
    """(manager, state): the newest intact checkpoint laid out as ``shardings`` say, or ``state`` if none."""
    import orbax.checkpoint as ocp

    directory = storage.join(workdir, "checkpoints")
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    steps = step_dirs(directory)
    for step in sorted(steps, reverse=True):
        why = damage(steps[step])
        if why is None:
            checkpoints = manager(workdir, config)
            try:
                return checkpoints, checkpoints.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # orbax and tensorstore raise many kinds on a broken file
                checkpoints.close()
                why = f"it cannot be restored: {type(e).__name__}: {str(e)[:300]}"
        set_aside(steps[step], why)
        _sync(f"set_aside_{step}")
    if steps:
        raise CheckpointError(
            f"none of the checkpoints in {directory} (steps {sorted(steps)}) can be restored; they were moved "
            f"aside as damaged-*. Start again with a new --workdir, or run again here to start from step 0."
        )
    return manager(workdir, config), state


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def save(checkpoints, step: int, state: Any) -> None:
    import orbax.checkpoint as ocp

    checkpoints.save(step, args=ocp.args.StandardSave(state), force=True)
    record_checksums(str(checkpoints.directory), below=step)  # the earlier ones are finished


def close(checkpoints) -> None:
    checkpoints.wait_until_finished()
    record_checksums(str(checkpoints.directory))
    checkpoints.close()


class Preemption:
    """SIGTERM or SIGINT (Ctrl-C) on any one host stops every host after the same step.

    One process: a handler sets a flag. Several: JAX's preemption service
    (started by ``jax.distributed.initialize``) catches SIGTERM on whichever
    host gets it and agrees through the coordination service on the next step
    all hosts can reach; SIGINT is passed on to it as SIGTERM.
    ``reached(step)`` must be asked after every step.
    """

    def __init__(self):
        self.multihost = jax.process_count() > 1
        self.signum = None
        handled = (signal.SIGINT,) if self.multihost else (signal.SIGTERM, signal.SIGINT)
        self.previous = {s: signal.signal(s, self._request) for s in handled}

    def _request(self, signum, _frame) -> None:
        self.signum = signum
        if self.multihost:
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Whether to save ``step`` and stop; the same answer on every host."""
        if self.multihost:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.signum is not None

    def interrupted(self, step: int) -> Interrupted:
        return Interrupted(step, self.signum or signal.SIGTERM)  # another host's signal reached this one as SIGTERM

    def close(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}
