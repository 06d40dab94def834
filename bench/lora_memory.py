"""Device memory of one train step, LoRA against full fine-tuning, side by side:
XLA's memory analysis of the compiled step. The step is compiled on abstract
arguments (no weight is allocated), so it runs on any backend; on a GPU or TPU
it is that device's compiler, and its figures are what that device needs.

    python -m bench.lora_memory --preset sdxl --pairs 4 --size 128        # SDXL, 1024 px
    python -m bench.lora_memory --preset tiny-sdxl --pairs 4 --size 32    # CPU smoke run

Full fine-tuning is ``configs/train/paper.py:sdxl`` (Adafactor, fp32
parameters, reference in the compute dtype); LoRA is ``configs/train/lora.py:sdxl``
(rank 8 on the attention projections, AdamW on the adapters, base held in the
compute dtype). Both: bf16 compute, ``save_dots`` remat, one micro-batch.
Peak = arguments + outputs - donated (aliased) + temporaries.

On a CPU the figures are XLA:CPU's (its fusion, fp32 compute of bf16 ops,
attention without flash kernels and buffer reuse are not XLA:GPU's or
XLA:TPU's), and by default they are read from the buffer assignment, where
each variant's compile, run in a child process, is then stopped (``--stop-at
buffer_assignment``; ``bdpo_jax/xla_memory.py``): XLA:CPU's code generation of
the SDXL step takes far longer than all before it. Run it there with
``XLA_FLAGS=--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``:
XLA:CPU's default scheduler trades memory for concurrency (SDXL LoRA: 378 GiB
peak against 103 GiB).
``--stop-at executable --xla-dump-to DIR`` compiles to the end and checks that
the dumped assignment gives the executable's figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bdpo_jax.labels import LabelSource
from bdpo_jax.models import UNetConfig, abstract_unet
from bdpo_jax.models.presets import unet_preset
from bdpo_jax.optim import OptimizerSettings, make_optimizer
from bdpo_jax.schedule import NoiseSchedule
from bdpo_jax.step import StepConfig, init_state, train_step
from bdpo_jax.trainer import lora_spec, model_options
from bdpo_jax.xla_memory import MemoryAnalysis, buffer_assignment_dump, peak_live_bytes, until_buffer_assignment
from bench.dpo_step import SD_SCHEDULER, synthetic_batch
from configs.train import lora as lora_configs
from configs.train import paper

GiB = 2**30


def tree_bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def abstract_step(config, unet_config: UNetConfig, pairs: int, size: int):
    """The jitted step of ``config`` and its abstract arguments (state, batch, base) for
    ``pairs`` pairs of ``size``-square latents."""
    lora = lora_spec(config)
    dtype = config.model.dtype
    graphdef, shapes = abstract_unet(unet_config, model_options(config), lora)
    adapters, unet_params = (nnx.to_pure_dict(s) for s in shapes.split(nnx.LoRAParam, ...))
    params, base = (adapters, unet_params) if lora else (unet_params, {})
    optimizer, schedule = make_optimizer(OptimizerSettings.from_config(config))
    state = jax.eval_shape(functools.partial(init_state, optimizer=optimizer, seed=0, ref_dtype=dtype), params)
    pixels = 8.0 * size
    cfg = StepConfig(
        NoiseSchedule.from_config(SD_SCHEDULER),
        LabelSource("vote"),
        ref_refresh_every=100,
        compute_dtype=dtype,
        ref_dtype=dtype,
        sdxl_time_ids=(pixels, pixels, 0.0, 0.0, pixels, pixels) if unet_config.pooled_text_dim else None,
    )
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, cfg=cfg, learning_rate=schedule),
        donate_argnums=(0,),
    )
    return step, (state, abstract(synthetic_batch(unet_config, pairs, size)), base)


def state_bytes(config, state, batch, base) -> dict:
    """The analytic floor: what the step holds whatever XLA does (gradients are
    the trained parameters' size), in bytes."""
    return {
        "lora_rank": config.lora.rank,
        "trained_parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
        "params": tree_bytes(state.params),
        "gradients": tree_bytes(state.params),
        "opt_state": tree_bytes(state.opt_state),
        "ref_params": tree_bytes(state.ref_params),
        "base": tree_bytes(base),
        "batch": tree_bytes(batch),
    } | {"floor": tree_bytes((state.params, state.params, state.opt_state, state.ref_params, base, batch))}


def attention_maps(unet_config: UNetConfig, size: int, text_length: int) -> Callable[[str, tuple[int, ...]], str]:
    """Tells the attention logits and probabilities (tokens x tokens or tokens x text,
    under batch and head dimensions) from the other buffers, by shape: what XLA's
    attention holds and flash attention (cuDNN's on a GPU) never materialises."""
    tokens = {(size // 2**level) ** 2 for level in range(len(unet_config.block_out_channels))}
    keys = tokens | {text_length}

    def kind(dtype: str, dims: tuple[int, ...]) -> str:
        is_map = len(dims) >= 3 and {dims[-2], dims[-1]} <= keys and {dims[-2], dims[-1]} & tokens
        return "peak_live_attention_maps" if is_map else "peak_live_other"

    return kind


def compile_to_the_end(step, args, dump_dir: str | None) -> dict:
    start = time.perf_counter()
    compiled = step.lower(*args).compile(compiler_options={"xla_dump_to": dump_dir} if dump_dir else None)
    figures = {"compile_seconds": time.perf_counter() - start, "stopped_at": "executable"}
    memory = MemoryAnalysis.of_compiled(compiled)
    if dump_dir:
        dump = buffer_assignment_dump(Path(dump_dir), "train_step")
        figures["buffer_assignment_matches"] = MemoryAnalysis.of_buffer_assignment(dump.read_text()) == memory
    return figures | memory.as_dict()


def compile_in_child(args: argparse.Namespace, variant: str, kind: Callable) -> dict:
    """This script compiling ``variant`` to the end in a child process, stopped once XLA
    assigned its buffers; also what is live at the peak, by ``kind``."""
    with tempfile.TemporaryDirectory(prefix="lora_memory_") as dump_dir:
        command = [sys.executable, "-m", "bench.lora_memory", "--only", variant, "--stop-at", "executable"]
        command += ["--preset", args.preset, "--model", args.model, "--pairs", str(args.pairs)]
        command += ["--size", str(args.size), "--xla-dump-to", dump_dir]
        assignment, seconds = until_buffer_assignment(command, Path(dump_dir), "train_step", args.timeout)
        memory = MemoryAnalysis.of_buffer_assignment(assignment.read_text())
        live = peak_live_bytes(assignment, kind)
    return {"compile_seconds": seconds, "stopped_at": "buffer_assignment"} | memory.as_dict() | live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sdxl", help="a bdpo_jax.models.presets name")
    parser.add_argument("--model", default="sdxl", help="the configs' variant: sd15, sd21 or sdxl")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="latent size (pixels / 8)")
    parser.add_argument("--only", choices=("full", "lora"), help="measure one variant")
    parser.add_argument(
        "--stop-at",
        choices=("buffer_assignment", "executable"),
        help="where to take the figures; default: buffer_assignment on a CPU, executable elsewhere",
    )
    parser.add_argument("--xla-dump-to", help="with --stop-at executable: dump XLA's buffer assignment here too")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for a buffer assignment")
    args = parser.parse_args()
    if args.xla_dump_to:  # an executable loaded from the persistent cache would dump nothing
        jax.config.update("jax_enable_compilation_cache", False)
    stop_at = args.stop_at or ("buffer_assignment" if jax.default_backend() == "cpu" else "executable")

    unet_config = UNetConfig.from_diffusers(unet_preset(args.preset))
    variants = {"full": paper.get_config(args.model), "lora": lora_configs.get_config(args.model)}
    results = {}
    for name, config in variants.items():
        if args.only not in (None, name):
            continue
        step, (state, batch, base) = abstract_step(config, unet_config, args.pairs, args.size)
        results[name] = state_bytes(config, state, batch, base)
        if stop_at == "executable":
            results[name] |= compile_to_the_end(step, (state, batch, base), args.xla_dump_to)
        else:
            kind = attention_maps(unet_config, args.size, text_length=batch["text_states"].shape[1])
            results[name] |= compile_in_child(args, name, kind)
        header = {"variant": name, "preset": args.preset, "pairs": args.pairs, "size": args.size}
        print(json.dumps(header | results[name]), flush=True)

    device = jax.devices()[0]
    print(f"\n{args.preset}, {args.pairs} pairs of {args.size}x{args.size} latents, XLA:{device.platform}")
    rows = ("params", "gradients", "opt_state", "ref_params", "base", "batch", "floor", "temporaries", "peak")
    rows += ("peak_live_attention_maps", "peak_live_other")
    print(f"{'GiB':<26}" + "".join(f"{name:>12}" for name in results))
    for row in rows:
        print(f"{row:<26}" + "".join(f"{r.get(row, float('nan')) / GiB:>12.3f}" for r in results.values()))
    if len(results) == 2:
        for row in ("floor", "peak"):
            print(f"{row} LoRA / full: {results['lora'][row] / results['full'][row]:.3f}")


if __name__ == "__main__":
    main()
