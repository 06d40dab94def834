"""What the exact zero margin costs: the train step with the policy and the
reference in one vmapped forward (stacked parameters, the default) against two
separate forwards, side by side: step time with real arrays, and XLA's memory
analysis of the compiled step (works with abstract arrays, so full SDXL shapes
compile on a CPU without allocating them).

    python -m bench.reference_forward --preset micro-sd1 --pairs 4 --size 16 --time 5   # CPU, timed
    python -m bench.reference_forward --preset sdxl --pairs 1 --size 128 --remat save_dots --time 0
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import optax

from bdpo_jax.labels import LabelSource
from bdpo_jax.models import ModelOptions, UNetConfig, abstract_unet
from bdpo_jax.models.presets import unet_preset
from bdpo_jax.models.weights import random_unet
from bdpo_jax.schedule import NoiseSchedule
from bdpo_jax.step import StepConfig, init_state, train_step
from bench import report
from bench.dpo_step import synthetic_batch
from bench.unet import timed


def step_and_arguments(config: UNetConfig, opts: ModelOptions, stacked: bool, pairs: int, size: int, concrete):
    """The jitted AdamW DPO step and its (abstract, where ``concrete`` parameters are not given, or real)
    state and batch."""
    dtype = jnp.dtype(opts.dtype).name
    cfg = StepConfig(
        NoiseSchedule.from_config({"_class_name": "DDPMScheduler"}),
        LabelSource("vote"),
        compute_dtype=dtype,
        ref_dtype=dtype,
        stacked_reference=stacked,
        sdxl_time_ids=(8.0 * size,) * 2 + (0.0, 0.0) + (8.0 * size,) * 2 if config.pooled_text_dim else None,
    )
    optimizer = optax.adamw(1e-5)
    graphdef, abstract = abstract_unet(config, opts)
    init = functools.partial(init_state, optimizer=optimizer, seed=0, ref_dtype=dtype)
    if concrete is None:
        from flax import nnx

        params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(abstract))
        state = jax.eval_shape(init, params)
    else:
        state = jax.jit(init)(concrete)  # jitted, as the trainer does: the reference its own buffers at any dtype
    batch = synthetic_batch(config, pairs, size)
    if concrete is None:
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, cfg=cfg, learning_rate=lambda s: 1e-5),
        donate_argnums=(0,),
    )
    return step, state, batch


def measure(config: UNetConfig, opts: ModelOptions, stacked: bool, pairs: int, size: int, steps: int) -> dict:
    concrete = None
    if steps:
        from flax import nnx

        concrete = nnx.to_pure_dict(nnx.state(random_unet(config, opts), nnx.Param))
    step, state, batch = step_and_arguments(config, opts, stacked, pairs, size, concrete)
    compiled = step.lower(state, batch).compile()
    memory = compiled.memory_analysis()
    result = {
        "temp_bytes": memory.temp_size_in_bytes,
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "flops": (compiled.cost_analysis() or {}).get("flops"),
    }
    if steps:
        holder = [state]

        def run():
            holder[0], metrics = compiled(holder[0], batch)
            return metrics

        result["seconds_per_step"] = timed(run, jax.block_until_ready, steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="micro-sd1")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    parser.add_argument("--time", type=int, default=5, help="timed steps (0: memory analysis only)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = UNetConfig.from_diffusers(unet_preset(args.preset))
    opts = ModelOptions(dtype=jnp.dtype(args.dtype), attention="xla", remat=args.remat)
    separate = measure(config, opts, False, args.pairs, args.size, args.time)
    stacked = measure(config, opts, True, args.pairs, args.size, args.time)
    result = {
        "preset": args.preset,
        "pairs": args.pairs,
        "latent_size": args.size,
        "dtype": args.dtype,
        "remat": args.remat,
        "device": jax.devices()[0].device_kind,
        "separate": separate,
        "stacked": stacked,
        "temp_bytes_ratio_stacked_over_separate": stacked["temp_bytes"] / max(separate["temp_bytes"], 1),
    }
    if args.time:
        result["time_ratio_stacked_over_separate"] = stacked["seconds_per_step"] / separate["seconds_per_step"]
    report(result, args.out)


if __name__ == "__main__":
    main()
