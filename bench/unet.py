"""Full-size UNet: our Flax forward against diffusers' PyTorch forward (fp32 and
bf16 errors), and forward+backward time, ours (jit, bf16) against PyTorch eager
bf16 autocast, side by side in one process on one device.

    python -m bench.unet --presets sd15,sdxl --out bench_unet.json     # on a GPU
    python -m bench.unet --presets tiny-sd1 --batch 2 --size 16         # smoke run on a CPU

Batch and latent size default to the issue's: SD1.5 batch 8 at 64x64, SDXL batch
2 at 128x128. Weights are random (diffusers' init, norms and biases perturbed).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from bdpo_jax.models import ModelOptions, UNetConfig, abstract_unet, params_from_diffusers
from bdpo_jax.models.presets import unet_preset
from bench.parity import random_diffusers_unet, random_inputs, torch_forward

DEFAULT_SHAPES = {"sd15": (8, 64), "sd21": (8, 96), "sdxl": (2, 128)}


def errors(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "reference_scale": float(np.abs(reference).max()),
    }


def timed(fn: Callable[[], object], wait: Callable[[object], object], steps: int, warmup: int = 2) -> float:
    """Median seconds per call after warmup (the first call compiles); ``wait``
    blocks until the device has finished the call's work."""
    for _ in range(warmup):
        wait(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        wait(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timed_torch(fn: Callable[[], object], device: str, steps: int) -> tuple[float, int | None]:
    """Median seconds per call and peak CUDA memory (None off CUDA)."""
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(fn, lambda _: torch.cuda.synchronize() if cuda else None, steps)
    return seconds, torch.cuda.max_memory_allocated() if cuda else None


def jax_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_preset(name: str, batch: int, size: int, steps: int, opts: ModelOptions, device: str) -> dict:
    """Errors always; times when ``steps`` > 0."""
    config_dict = unet_preset(name)
    config = UNetConfig.from_diffusers(config_dict)
    torch_unet = random_diffusers_unet(config_dict).to(device)
    _, abstract = abstract_unet(config, ModelOptions())
    tensors = {k: v.detach().cpu().numpy() for k, v in torch_unet.state_dict().items()}
    params = params_from_diffusers(abstract, tensors)
    del tensors
    inputs = random_inputs(config, batch=batch, size=size)
    jax_inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    result: dict = {"preset": name, "batch": batch, "latent_size": size, "device": str(jax.devices()[0])}

    def forward(opts: ModelOptions):
        graphdef_opts, _ = abstract_unet(config, opts)
        return jax.jit(lambda p, x: nnx.merge(graphdef_opts, p)(**x))

    # Accuracy: fp32 with full-precision matmuls on both sides, then bf16.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reference = torch_forward(torch_unet, inputs)
    with jax.default_matmul_precision("highest"):
        ours_fp32 = np.asarray(forward(ModelOptions(attention="xla"))(params, jax_inputs))
    result["fp32_ours_vs_diffusers"] = errors(ours_fp32, reference)
    ours_bf16 = np.asarray(forward(opts)(params, jax_inputs))
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        theirs_bf16 = torch_forward(torch_unet, inputs)
    result["bf16_ours_vs_diffusers_fp32"] = errors(ours_bf16, reference)
    result["bf16_diffusers_vs_diffusers_fp32"] = errors(theirs_bf16, reference)
    result["bf16_ours_vs_diffusers_bf16"] = errors(ours_bf16, theirs_bf16)

    if steps <= 0:
        return result

    # Speed: forward + backward of an MSE loss w.r.t. all parameters, bf16 compute.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    graphdef_opts, _ = abstract_unet(config, opts)
    target = jnp.zeros_like(jax_inputs["sample"])

    @jax.jit
    def jax_grad(params, x):
        return jax.grad(lambda p: jnp.mean((nnx.merge(graphdef_opts, p)(**x) - target) ** 2))(params)

    jax_step = functools.partial(jax_grad, params, jax_inputs)
    jax_seconds = timed(jax_step, jax.block_until_ready, steps)
    result["ours_fwd_bwd_ms"] = 1e3 * jax_seconds
    result["ours_peak_bytes"] = jax_peak_bytes()
    del params, jax_step  # free device memory for the PyTorch run

    torch_unet.train()
    t_inputs = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    sample = t_inputs["sample"].permute(0, 3, 1, 2).contiguous()
    added = {"text_embeds": t_inputs["text_embeds"], "time_ids": t_inputs["time_ids"]} if "time_ids" in inputs else None

    def torch_step():
        torch_unet.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = torch_unet(
                sample, t_inputs["timesteps"], t_inputs["encoder_hidden_states"], added_cond_kwargs=added
            ).sample
        torch.mean(out.float() ** 2).backward()

    torch_seconds, result["diffusers_peak_bytes"] = timed_torch(torch_step, device, steps)
    result["diffusers_eager_fwd_bwd_ms"] = 1e3 * torch_seconds
    result["speedup_ours_over_diffusers_eager"] = torch_seconds / jax_seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="sd15,sdxl")
    parser.add_argument("--batch", type=int, default=None, help="default: per preset, see module doc")
    parser.add_argument("--size", type=int, default=None, help="latent height and width")
    parser.add_argument("--steps", type=int, default=10, help="timed steps; 0 measures errors only")
    parser.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    opts = ModelOptions(dtype=jnp.bfloat16, attention=args.attention, remat=args.remat)
    results = []
    for name in args.presets.split(","):
        batch, size = DEFAULT_SHAPES.get(name, (2, 16))
        result = bench_preset(name, args.batch or batch, args.size or size, args.steps, opts, device)
        results.append(result)
        print(json.dumps(result, indent=2), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
