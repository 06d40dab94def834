"""BalancedDPO training: the cache of ``scorers_torch.preprocess`` in, orbax
checkpoints out.

    python -m bdpo_jax.train --config configs/train/paper.py:sd15 --workdir /ckpt/run1 \
        --config.cache=/cache/sd15 --config.train.beta=2500

The same code runs on one CPU, N devices, and multi-host pods (every host runs
this command; ``jax.distributed.initialize`` joins them). Resume is automatic:
a workdir with checkpoints continues from the latest one. The loop never waits
on the host: batches are built ahead on a thread, and metrics are read one
step late.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from bdpo_jax import checkpoints, console, errors, flops, storage
from bdpo_jax.data import Prefetcher
from bdpo_jax.errors import UserError
from bdpo_jax.metrics import MetricsWriter
from bdpo_jax.step import TrainState
from bdpo_jax.trainer import Trainer, WithBase, build_trainer
from bdpo_jax.workdir import WorkdirError, acquire_lock, check_resumed_config, record_base_model, release_lock


class Progress:
    """Metrics of logged steps, one step late, with pairs/s since the last logged step."""

    def __init__(self, trainer: Trainer, writer: MetricsWriter, start: int, total: int, step_flops: float | None):
        self.trainer, self.writer, self.total, self.flops = trainer, writer, total, step_flops
        self.tick, self.last_step, self.estimated = time.perf_counter(), start, False
        self.bar = tqdm(total=total, initial=start, desc="steps", disable=jax.process_index() != 0)

    def log(self, step: int, device_metrics: dict) -> None:
        metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        now = time.perf_counter()
        steps_per_s = (step - self.last_step) / (now - self.tick)
        metrics["pairs_per_s"] = steps_per_s * self.trainer.config.train.global_batch
        metrics |= flops.throughput(self.flops, steps_per_s, jax.device_count(), jax.devices()[0].device_kind)
        self.tick, self.last_step = now, step
        self.writer.write(step, metrics)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", pairs_per_s=f"{metrics['pairs_per_s']:.1f}")
        preference = (  # SFT's training step has no reference to measure against
            f"  implicit acc {metrics['implicit_accuracy']:.3f}  margin {metrics['reward_margin']:.3f}"
            if "implicit_accuracy" in metrics
            else ""
        )
        console.say(
            f"step {step}/{self.total}  loss {metrics['loss']:.4f}{preference}  grad norm {metrics['grad_norm']:.3g}"
            f"  lr {metrics['learning_rate']:.2e}  {metrics['pairs_per_s']:.1f} pairs/s"
        )
        if not self.estimated and step < self.total:  # the first interval includes the first step's warm-up
            console.say(f"estimated time left: at most {console.duration((self.total - step) / steps_per_s)}")
            self.estimated = True


class NonFiniteError(UserError):
    """The loss or the gradient stopped being finite; nothing after the last finite checkpoint is saved."""


@jax.jit
def first_nonfinite(first: jax.Array, step: jax.Array, metrics: dict) -> jax.Array:
    """The first step (1-based) whose loss or gradient norm is not finite; 0 while all are."""
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    return jnp.where((first == 0) & ~finite, step, first)


def check_finite(first: jax.Array, saved: int | None) -> None:
    """Raises ``NonFiniteError`` if a step so far was not finite (a host sync: asked at log and save steps)."""
    step = int(first)
    if step:
        kept = f"the last checkpoint, step {saved}, is kept" if saved else "no checkpoint was saved"
        raise NonFiniteError(
            f"the loss or the gradient is not finite at step {step}; {kept}. Lower optimizer.learning_rate, "
            f"check the cache's latents for inf/nan, or try model.dtype=float32; a run again here resumes "
            f"from the last checkpoint."
        )


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    trainer: Trainer | None = None,
    allow_config_change: bool = False,
) -> TrainState:
    """Trains to ``config.train.steps``, resuming from the workdir's latest intact
    checkpoint. ``trainer``: one already built from ``config`` (its state is consumed).
    One run at a time per workdir; a resumed run keeps the config that changes its data
    and model unless ``allow_config_change``. A signal (SIGTERM, SIGINT) saves the step
    in flight and raises ``checkpoints.Interrupted``."""
    checkpoints.check_checkpoint_location(workdir)
    workdir = storage.absolute(workdir)
    lock = hold_workdir(workdir)
    try:
        return train_locked(config, workdir, trainer, allow_config_change)
    finally:
        if lock is not None:
            release_lock(lock)


def hold_workdir(workdir: str) -> str | None:
    """Process 0 locks the workdir; every process fails alike if it cannot."""
    try:
        if storage.is_local(workdir):
            Path(workdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create the work directory {workdir} ({e}): choose a writable --workdir") from e
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire_lock(workdir)
        except WorkdirError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if int(multihost_utils.broadcast_one_to_all(np.int32(error is not None))):
            raise error or WorkdirError(f"process 0 could not lock {workdir}: see its message")
    if error is not None:
        raise error
    return lock


def compile_step(step_fn: WithBase, state: TrainState, batch: dict) -> tuple[WithBase, float | None]:
    """The step traced and compiled once, ahead of the loop, and its FLOPs by XLA's cost analysis
    (of the compiled program, else of its lowering): tracing a UNet's step takes longer than running
    it, so it is done once. Several processes: returned once every process has compiled it (gloo,
    JAX's CPU collectives, gives up on a peer after 30 s at the first step, and one process can
    compile minutes longer than another)."""
    lowered = step_fn.lower(state, batch)
    compiled = dataclasses.replace(step_fn, jitted=lowered.compile())
    step_flops = flops.program_flops(compiled.jitted) or flops.program_flops(lowered)
    if jax.process_count() > 1:
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier("bdpo_step_compiled", timeout_in_ms=60 * 60_000)
    return compiled, step_flops


def train_locked(config, workdir: str, trainer: Trainer | None, allow_config_change: bool) -> TrainState:
    saved = checkpoints.step_dirs(storage.join(workdir, "checkpoints"))
    if jax.process_index() == 0:  # before anything loads: a changed config is refused at once
        check_resumed_config(workdir, config, max(saved, default=0), allow_config_change)
    trainer = trainer or build_trainer(config)
    if jax.process_index() == 0:
        record_base_model(workdir, trainer.plan.unet_dir)
    manager, state = checkpoints.restore_latest(workdir, config, trainer.state, trainer.state_shardings)
    trainer.state = None  # the loop owns (and donates) the state from here

    start, total = int(state.step), config.train.steps
    for line in console.plan_lines(trainer, start, total, workdir):
        console.say(line)
    step_fn, step_flops = trainer.step_fn, None
    if start < total and isinstance(step_fn, WithBase):  # not a wrapped step (tests' hooks): compiled at its call
        began = time.perf_counter()
        step_fn, step_flops = compile_step(step_fn, state, trainer.global_batch(start))
        peak = flops.peak_tflops(jax.devices()[0].device_kind)
        seconds = time.perf_counter() - began
        console.say(console.compiled_line(seconds, total - start, step_flops, peak, config.log_every))

    preemption = checkpoints.Preemption()
    writer = MetricsWriter(workdir, start)
    batches = Prefetcher(trainer.global_batch, start, total, config.data.prefetch)
    progress = Progress(trainer, writer, start, total, step_flops)
    pending = None  # (step, metrics) to log once the next step is dispatched
    done, last_saved = start, start or None
    nonfinite = np.int32(0)  # on the device after the first step
    interrupted = None
    try:
        for step, batch in batches:
            state, metrics = step_fn(state, batch)
            done = step + 1
            progress.bar.update(1)
            if pending is not None:  # the steps up to the pending one are done: no wait on this one
                check_finite(nonfinite, last_saved)
                progress.log(*pending)
            nonfinite = first_nonfinite(nonfinite, done, metrics)
            pending = (done, metrics) if done % config.log_every == 0 or done == total else None
            stop = preemption.reached(done)
            if done % config.checkpoint.every == 0 or done == total or stop:
                check_finite(nonfinite, last_saved)
                checkpoints.save(manager, done, state)
                last_saved = done
            if stop and done < total:  # at the last step, the run is simply done
                interrupted = preemption.interrupted(done)
                print(f"process {jax.process_index()}: {interrupted}", file=sys.stderr, flush=True)
                break
        if pending is not None:
            progress.log(*pending)
    finally:
        batches.close()
        progress.bar.close()
        writer.close()
        preemption.close()
        checkpoints.close(manager)
    console.say(
        f"step {done}/{total}: checkpoints in {storage.join(workdir, 'checkpoints')}, metrics in {writer.path} "
        f"and {writer.tensorboard_dir}"
    )
    if interrupted is not None:
        raise interrupted
    return state


def main(argv: list[str]) -> None:
    del argv
    console.quiet_libraries()
    config = flags.FLAGS.config
    if config.distributed:
        jax.distributed.initialize()
    # A signal ends it as checkpoints.Interrupted, step saved: the boundary exits 128 + the signal, a non-zero
    # status that a scheduler requeues.
    train(config, flags.FLAGS.workdir, allow_config_change=flags.FLAGS.allow_config_change)


if __name__ == "__main__":  # flags are defined here, so that importing this module defines none
    config_flags.DEFINE_config_file("config", None, "A configs/train/*.py file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (a path or gs:// URL); a run there resumes.")
    flags.DEFINE_bool("allow_config_change", False, "Resume even where the config changes the data or model.")
    flags.mark_flags_as_required(["config", "workdir"])
    errors.run(main)
