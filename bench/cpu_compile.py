"""How long XLA takes to compile one train step for the CPU, under several sets of XLA flags side by side:
each set in a fresh process (XLA reads its flags once per process), the same step and batch. Most of the test
suite's time is such compiles; tests/conftest.py's flags were chosen with this benchmark.

    python -m bench.cpu_compile                                  # micro UNet, 4 pairs, the default flag sets
    python -m bench.cpu_compile --preset tiny-sd1 --variants "" "--xla_cpu_use_fusion_emitters=false"

Reports, per flag set: tracing and lowering seconds, compile seconds (wall and the process's CPU seconds, all
threads), the first and second step's seconds, and the step's loss and gradient norm (the flags must not
change what the step computes); ratios are against the first set. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench import report

DEFAULT_VARIANTS = (
    "",  # XLA's defaults
    "--xla_backend_optimization_level=0",
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
)


def measure(preset: str, pairs: int, size: int) -> dict[str, float]:
    """Compiles and runs one AdamW DPO step in this process (XLA_FLAGS already set)."""
    import jax
    from flax import nnx

    from bdpo_jax.models import ModelOptions, UNetConfig
    from bdpo_jax.models.presets import unet_preset
    from bdpo_jax.models.weights import random_unet
    from bench.reference_forward import step_and_arguments

    config, options = UNetConfig.from_diffusers(unet_preset(preset)), ModelOptions()
    params = nnx.to_pure_dict(nnx.state(random_unet(config, options), nnx.Param))
    step, state, batch = step_and_arguments(config, options, True, pairs, size, params)

    started = time.perf_counter()
    lowered = step.lower(state, batch)
    lowered_at, cpu_before = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    compiled_at, cpu_after = time.perf_counter(), time.process_time()
    runs = []
    for _ in range(2):
        run_start = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, batch))
        runs.append(time.perf_counter() - run_start)
    return {
        "lower_s": lowered_at - started,
        "compile_s": compiled_at - lowered_at,
        "compile_cpu_s": cpu_after - cpu_before,
        "first_step_s": runs[0],
        "second_step_s": runs[1],
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
    }


def run_variant(flags: str, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, JAX_ENABLE_COMPILATION_CACHE="false")
    command = [sys.executable, "-m", "bench.cpu_compile", "--child"]
    command += ["--preset", args.preset, "--pairs", str(args.pairs), "--size", str(args.size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"XLA_FLAGS={flags!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="micro-sd1")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="XLA_FLAGS, one set each")
    parser.add_argument("--out", help="also write the JSON result here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.preset, args.pairs, args.size)))
        return

    rows = []
    for flags in args.variants:
        row = {"xla_flags": flags or "(XLA's defaults)", **run_variant(flags, args)}
        print(f"{row['xla_flags']}: compile {row['compile_s']:.1f} s, {row['compile_cpu_s']:.1f} CPU-s", flush=True)
        rows.append(row)
    first = rows[0]
    for row in rows:
        row["compile_cpu_ratio"] = row["compile_cpu_s"] / first["compile_cpu_s"]
        row["compile_wall_ratio"] = row["compile_s"] / first["compile_s"]
        row["loss_difference"] = abs(row["loss"] - first["loss"])
        row["grad_norm_relative_difference"] = abs(row["grad_norm"] - first["grad_norm"]) / first["grad_norm"]
    setup = {"preset": args.preset, "pairs": args.pairs, "size": args.size, "cpus": os.cpu_count()}
    report({"setup": setup, "variants": rows}, args.out)


if __name__ == "__main__":
    main()
