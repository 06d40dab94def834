"""What a run says on the console: its plan, its progress, where its results
went. Libraries' INFO logs (orbax, absl) stay off unless ``--verbosity`` asks."""

from __future__ import annotations

import logging as std_logging

import jax
from absl import flags, logging
from tqdm import tqdm


def quiet_libraries() -> None:
    """Warnings and errors only, unless the command line set ``--verbosity`` (``-v``)."""
    if flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger().setLevel(std_logging.WARNING)


def say(message: str) -> None:
    """A line from process 0, printed above the progress bar."""
    if jax.process_index() == 0:
        tqdm.write(message)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_lines(trainer, start: int, total: int, workdir: str) -> list[str]:
    """The run in a few lines: model, cache, pairs, devices, mesh, steps."""
    plan, config = trainer.plan, trainer.config
    dataset = trainer.dataset
    devices = plan.devices
    data, fsdp = plan.mesh_shape
    return [
        f"model    {plan.unet_dir} ({trainer.parameter_count / 1e6:.0f}M parameters, "
        f"compute {config.model.dtype}, reference {plan.step_config.ref_dtype})",
        f"cache    {dataset.path} ({len(dataset)} usable pairs, scorers {', '.join(dataset.scorer_names)})",
        f"train    {config.train.global_batch} pairs per step, {config.train.objective} on "
        f"{config.train.label_source} labels, beta {config.train.beta:g}, lr {plan.optimizer.learning_rate:.2e}, "
        f"reference refresh every {config.train.ref_refresh_every or 'never'}",
        f"devices  {len(devices)} x {devices[0].device_kind} on {jax.process_count()} process(es), "
        f"mesh data {data} x fsdp {fsdp}",
        f"steps    {start} -> {total} ({'resumed' if start else 'new run'} in {workdir})",
    ]


def compiled_line(seconds: float, steps: int, flops: float | None, peak: float | None, log_every: int) -> str:
    """How long the step took to compile, and the run's time where its executed FLOPs run at 40% of
    the devices' peak (HFU 40%), where both are known."""
    if flops and peak:
        estimate = f"~{duration(steps * flops / (0.4 * peak * 1e12 * jax.device_count()))} at 40% of peak"
    else:
        estimate = f"measured after the first {log_every} steps"
    return f"compiled the train step in {duration(seconds)}; time {estimate}"
