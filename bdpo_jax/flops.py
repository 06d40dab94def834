"""FLOPs of a step, and their utilisation of the device's dense bf16 peak.

Two counts, as the literature keeps them apart (PaLM, appendix B): the FLOPs
the compiled step executes, by XLA's cost analysis, give the hardware FLOP
utilisation (HFU); the FLOPs the DPO step needs, recomputation not counted,
give the model FLOP utilisation (MFU). They differ by the stacked reference's
second policy forward in the backward (``StepConfig.reference_backward``
"recompute": x1.25) and by remat's recomputation."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from bdpo_jax.targets import TARGETS

if TYPE_CHECKING:
    from bdpo_jax.trainer import RunPlan

# Dense bf16 peak per device, TFLOP/s, by the device kind jax names (a v5p chip compiled for without
# the hardware is "TPU v5"); a device not listed reports no utilisation.
PEAK_TFLOPS = {t.device_kind: t.peak_tflops for t in TARGETS.values()} | {"TPU v5p": 459.0}


def peak_tflops(device_kind: str) -> float | None:
    return PEAK_TFLOPS.get(device_kind)


def program_flops(stage: Any) -> float | None:
    """FLOPs of one call of a lowered or compiled program, by XLA's cost analysis (None where the
    backend offers none)."""
    try:
        analysis = stage.cost_analysis()
    except Exception:  # not every backend offers it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def throughput(flops: float | None, steps_per_s: float, num_devices: int, device_kind: str) -> dict[str, float]:
    """TFLOP/s per device of the executed FLOPs, and their utilisation of the peak (HFU) where it is known."""
    if not flops:
        return {}
    tflops = flops * steps_per_s / 1e12 / num_devices
    peak = peak_tflops(device_kind)
    return {"tflops_per_s_per_device": tflops} | ({"hfu": tflops / peak} if peak else {})


def model_flops(run: RunPlan) -> float:
    """A global step's model FLOPs: per image, the policy's forward and its backward and, for DPO, the
    reference's forward. A backward counts as two forwards (weight and input gradients), as MFU counts
    it; one with LoRA, whose frozen base takes no weight gradient. The forward's FLOPs are XLA's count
    of the UNet's lowered program at the run's shapes (XLA attention, no remat; nothing compiled)."""
    from flax import nnx

    from bdpo_jax.models import abstract_unet
    from bdpo_jax.step import to_compute, unet_inputs

    options = dataclasses.replace(run.options, attention="xla", remat="none")
    graphdef, abstract = abstract_unet(run.unet_config, options, run.lora)
    step = run.step_config
    images = 2  # one pair's, in one forward: FLOPs grow with the batch

    def forward(state, batch):  # the step's own inputs (step.unet_inputs), for the batch's first pair
        pair = to_compute(jax.tree.map(lambda a: a[:1], batch))
        noisy = jnp.concatenate([pair["latents_0"], pair["latents_1"]]).astype(options.dtype)
        return nnx.merge(graphdef, state)(**unet_inputs(pair, noisy, jnp.zeros((1,), jnp.int32), step))

    per_image = program_flops(jax.jit(forward).lower(abstract, run.abstract_batch())) / images
    backward = 1 if run.lora is not None else 2
    if step.objective == "sft":  # the winner alone, no reference
        return per_image * run.config.train.global_batch * (1 + backward)
    return per_image * 2 * run.config.train.global_batch * (2 + backward)
