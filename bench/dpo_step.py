"""One BalancedDPO train step, ours (jit, bf16 compute, AdamW) against the
PyTorch + diffusers reference step (policy forward and backward on winner and
loser with shared noise, reference forward, AdamW, bf16 autocast), side by side.

    python -m bench.dpo_step --preset sd15 --pairs 8 --size 64     # SD1.5 shapes, on a GPU
    python -m bench.dpo_step --preset sdxl --pairs 4 --size 128 --remat save_dots
    python -m bench.dpo_step --preset micro-sd1 --pairs 4 --size 16 --steps 2   # CPU smoke run

Reports pairs/s, peak memory, TFLOP/s (XLA's cost analysis of our step) and
MFU where the device's peak is known, and the ratio ours / reference. With
``--sft``, also our SFT step on the same batch (the winners' forward alone,
no reference) and its speed over our DPO step's:

    python -m bench.dpo_step --preset micro-sd1 --pairs 32 --size 8 --steps 50 --sft
"""

from __future__ import annotations

import argparse
import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx

from bdpo_jax import cache as cache_format
from bdpo_jax.flops import PEAK_TFLOPS
from bdpo_jax.labels import LabelSource
from bdpo_jax.models import ModelOptions, UNetConfig, abstract_unet, params_from_diffusers
from bdpo_jax.models.presets import unet_preset
from bdpo_jax.schedule import NoiseSchedule
from bdpo_jax.step import StepConfig, init_state, train_step
from bench import report
from bench.parity import random_diffusers_unet
from bench.unet import jax_peak_bytes, timed, timed_torch

# Stable Diffusion's training schedule, as its pipelines' scheduler configs give it.
SD_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}


def synthetic_batch(config: UNetConfig, pairs: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A train batch in the cache's schema (fp16 latents and text states), 3 scorers, 77 tokens."""
    sizes = {
        "h": size,
        "w": size,
        "c": config.in_channels,
        "scorers": 3,
        "text_length": 77,
        "text_dim": config.cross_attention_dim[0],
        "pooled_dim": config.pooled_text_dim,
    }
    return cache_format.synthetic_arrays(sizes, pairs, seed=seed, batch=True)


def ours(
    config: UNetConfig, tensors: dict, batch: dict, opts: ModelOptions, steps: int, beta: float, objective: str = "dpo"
) -> dict:
    graphdef, abstract = abstract_unet(config, opts)
    params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(params_from_diffusers(abstract, tensors)))
    optimizer = optax.adamw(1e-5)
    size = batch["latents_0"].shape[1]
    cfg = StepConfig(
        NoiseSchedule.from_config(SD_SCHEDULER),
        LabelSource("vote"),
        objective=objective,
        beta=beta,
        ref_refresh_every=100,
        compute_dtype=jnp.dtype(opts.dtype).name,
        ref_dtype=jnp.dtype(opts.dtype).name,
        sdxl_time_ids=(8.0 * size,) * 2 + (0.0, 0.0) + (8.0 * size,) * 2 if config.pooled_text_dim else None,
    )
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, cfg=cfg, learning_rate=lambda s: 1e-5),
        donate_argnums=(0,),
    )
    state = init_state(params, optimizer, 0, ref_dtype=cfg.ref_dtype)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    analysis = step.lower(state, device_batch).cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    flops = float(analysis.get("flops", 0.0)) if analysis else 0.0
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], device_batch)
        return metrics

    seconds = timed(run, jax.block_until_ready, steps)
    return {"seconds_per_step": seconds, "flops_per_step": flops, "peak_bytes": jax_peak_bytes()}


def reference(torch_unet, batch: dict, steps: int, beta: float, device: str) -> dict:
    """The PyTorch Diffusion-DPO step, as the reference implementations write it."""
    policy = torch_unet.to(device).train()
    ref = copy.deepcopy(policy).eval().requires_grad_(False).to(torch.bfloat16)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    alphas = torch.tensor(NoiseSchedule.from_config(SD_SCHEDULER).alphas_cumprod, device=device, dtype=torch.float32)
    t = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    t = {k: v.float() if v.is_floating_point() else v for k, v in t.items()}
    winners = torch.where(t["label"][:, None, None, None] > 0, t["latents_0"], t["latents_1"])
    losers = torch.where(t["label"][:, None, None, None] > 0, t["latents_1"], t["latents_0"])
    latents = torch.cat([winners, losers]).permute(0, 3, 1, 2).contiguous()
    context = torch.cat([t["text_states"], t["text_states"]])
    added = None
    if "pooled" in t:
        size = 8.0 * latents.shape[-1]
        time_ids = torch.tensor([size, size, 0, 0, size, size], device=device).repeat(latents.shape[0], 1)
        added = {"text_embeds": torch.cat([t["pooled"], t["pooled"]]), "time_ids": time_ids}

    def step():
        n = latents.shape[0] // 2
        noise = torch.randn_like(latents[:n]).repeat(2, 1, 1, 1)
        timesteps = torch.randint(0, 1000, (n,), device=device).repeat(2)
        a = alphas[timesteps][:, None, None, None]
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            pred = policy(noisy, timesteps, context, added_cond_kwargs=added).sample
            with torch.no_grad():
                ref_pred = ref(noisy, timesteps, context, added_cond_kwargs=added).sample
        model_losses = (pred.float() - noise).pow(2).mean(dim=[1, 2, 3])
        ref_losses = (ref_pred.float() - noise).pow(2).mean(dim=[1, 2, 3])
        model_diff = model_losses[:n] - model_losses[n:]
        ref_diff = ref_losses[:n] - ref_losses[n:]
        loss = -F.logsigmoid(-0.5 * beta * (model_diff - ref_diff)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    seconds, peak = timed_torch(step, device, steps)
    return {"seconds_per_step": seconds, "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd15")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--sft", action="store_true", help="also our SFT step, against our DPO step")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config_dict = unet_preset(args.preset)
    config = UNetConfig.from_diffusers(config_dict)
    torch_unet = random_diffusers_unet(config_dict)
    tensors = {k: v.detach().numpy() for k, v in torch_unet.state_dict().items()}
    batch = synthetic_batch(config, args.pairs, args.size)
    opts = ModelOptions(dtype=jnp.bfloat16, attention=args.attention, remat=args.remat)
    ours_result = ours(config, tensors, batch, opts, args.steps, args.beta)
    sft_result = ours(config, tensors, batch, opts, args.steps, args.beta, "sft") if args.sft else None
    del tensors
    if args.remat != "none":
        torch_unet.enable_gradient_checkpointing()
    reference_result = reference(torch_unet, batch, args.steps, args.beta, device)

    kind = jax.devices()[0].device_kind
    tflops = ours_result["flops_per_step"] / ours_result["seconds_per_step"] / 1e12
    result = {
        "preset": args.preset,
        "pairs": args.pairs,
        "latent_size": args.size,
        "device": kind,
        "ours_pairs_per_s": args.pairs / ours_result["seconds_per_step"],
        "reference_pairs_per_s": args.pairs / reference_result["seconds_per_step"],
        "ratio_ours_over_reference": reference_result["seconds_per_step"] / ours_result["seconds_per_step"],
        "ours_tflops_per_s": tflops,
        "ours_mfu": tflops / PEAK_TFLOPS[kind] if kind in PEAK_TFLOPS else None,
        "ours_peak_bytes": ours_result["peak_bytes"],
        "reference_peak_bytes": reference_result["peak_bytes"],
    }
    if sft_result:
        result["ours_sft_pairs_per_s"] = args.pairs / sft_result["seconds_per_step"]
        result["ratio_sft_over_dpo"] = ours_result["seconds_per_step"] / sft_result["seconds_per_step"]
        if ours_result["flops_per_step"]:  # 0 where XLA gives no cost analysis
            result["ratio_sft_over_dpo_flops"] = sft_result["flops_per_step"] / ours_result["flops_per_step"]
    report(result, args.out)


if __name__ == "__main__":
    main()
