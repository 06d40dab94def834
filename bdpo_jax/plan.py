"""The exact train step compiled ahead of time for a TPU slice or a GPU, on this
CPU, from shapes alone: per-chip memory, fit, and on TPU the compiler's time
estimate, before anyone rents the hardware.

    python -m bdpo_jax.plan --config configs/train/paper.py:sd15 --unet sd15 --target v5p-8
    python -m bdpo_jax.plan --config configs/train/paper.py:sd15 --config.cache=/cache/sd15 --target h100 --fit

The config is checked as ``bdpo_jax.train`` checks it (``trainer.check``); no
weight and no cache array is read. Shapes come from the config, the cache's
manifest when ``--config.cache`` is given, and the base UNet's config.json
(``--config.base_model``) or a preset (``--unet``). The step is the run's own
(``trainer.jitted_step``) on the target's real mesh and shardings.

Figures are the compiler's: XLA's buffer assignment for memory, XLA's TPU cost
model for time (``optimal_seconds``; none for GPUs). A TPU compile refuses a
program larger than the chip's memory; a GPU compile does not, so fit is the
total against the chip's memory (and jax on a GPU preallocates 75% of it unless
``XLA_PYTHON_CLIENT_MEM_FRACTION`` says otherwise). Pallas kernels (splash
attention) are opaque to the cost model: their FLOPs and time are not in its
figures, which this module then adds as a lower bound of their own (their
FLOPs at the chip's peak).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from bdpo_jax import flops, sharding, targets, trainer
from bdpo_jax.errors import UserError
from bdpo_jax.models import UNetConfig
from bdpo_jax.models.presets import unet_preset
from bdpo_jax.optim import make_optimizer
from bdpo_jax.xla_memory import CompileKilled, MemoryAnalysis, largest_at_peak, until_buffer_assignment

REMAT_ORDER = ("none", "save_dots", "full")  # least recomputation first
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# A collective's result: a synchronous op's, or an async pair's "-done" (its "-start" also holds the operands).
_HLO_OP = re.compile(r"= (\(?[a-z0-9]+\[[^=]*?) (" + "|".join(COLLECTIVES) + r")(?:-done)?\(")
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([\d,]*)\]")
# GPU compiles skip autotuning; without it Triton's GEMM tiling fails on SD's backward (an XLA internal
# error), so GPU plans compile matmuls with cuBLAS: its memory may differ slightly from a tuned run's.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')


@dataclasses.dataclass
class Plan:
    """One compile's figures, per chip; bytes unless named otherwise."""

    target: str
    device_kind: str
    chips: int
    pairs_per_chip: float
    grad_accum: int
    remat: str
    attention: str
    state: dict[str, int]  # the state's leaves by part (params, reference, optimizer, ...), per chip
    batch: int
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    chip_memory: int
    fits: bool
    compile_seconds: float
    compile_cpu_seconds: float | None = None  # the compile's user + system time: its cost on an idle machine
    flops: float | None = None  # per chip per step, XLA's count of what the program executes
    model_flops: float | None = None  # per chip per step, what the DPO step needs (flops.model_flops)
    estimated_seconds: float | None = None  # TPU cost model, per step
    pallas_flops: float = 0.0  # per chip per step, in kernels the cost model does not see
    collectives: dict[str, int] = dataclasses.field(default_factory=dict)  # bytes each kind moves, per chip
    custom_calls: dict[str, int] = dataclasses.field(default_factory=dict)  # kernels in the program, by target
    at_peak: dict[str, int] = dataclasses.field(default_factory=dict)  # --memory_only: the largest shapes at the peak
    peak_tflops: float | None = None
    error: str | None = None  # the compiler's refusal, when it did not fit

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    @property
    def step_seconds(self) -> float | None:
        """The cost model's time, plus the Pallas kernels' at the chip's peak."""
        if self.estimated_seconds is None:
            return None
        return self.estimated_seconds + self.pallas_flops / (self.peak_tflops * 1e12)

    @property
    def pairs_per_second(self) -> float | None:
        seconds = self.step_seconds
        return self.pairs_per_chip * self.grad_accum / seconds if seconds else None

    def utilisation(self, flops: float | None) -> float | None:
        seconds = self.step_seconds
        return flops / seconds / (self.peak_tflops * 1e12) if seconds and flops else None

    @property
    def mfu(self) -> float | None:
        """Model FLOP utilisation: the FLOPs the step needs, recomputation not counted."""
        return self.utilisation(self.model_flops)

    @property
    def hfu(self) -> float | None:
        """Hardware FLOP utilisation: the FLOPs the program executes, the Pallas kernels' included."""
        return self.utilisation(self.flops and self.flops + self.pallas_flops)

    def as_dict(self) -> dict[str, Any]:
        extra = ("total", "step_seconds", "pairs_per_second", "mfu", "hfu")
        return dataclasses.asdict(self) | {name: getattr(self, name) for name in extra}


class PlanError(UserError):
    """The plan cannot be made (a config that does not fit itself, an unknown target)."""


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def per_chip_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes each kind of collective produces per chip per step, summed over the compiled program's ops."""
    moved = dict.fromkeys(COLLECTIVES, 0)
    for shapes, kind in _HLO_OP.findall(hlo_text):
        for dtype, dims in _ARRAY.findall(shapes):
            bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype) or 0)  # f32, bf16, s8, pred ...
            moved[kind] += bits // 8 * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return {k: v for k, v in moved.items() if v}


def custom_call_counts(hlo_text: str) -> dict[str, int]:
    """How many times each custom call (a Pallas kernel, cuDNN's attention, ...) appears in a compiled program."""
    counts: dict[str, int] = {}
    for name in _CUSTOM_CALL.findall(hlo_text):
        counts[name] = counts.get(name, 0) + 1
    return counts


def attention_flops(plan: trainer.RunPlan, pairs: float) -> dict[str, float]:
    """FLOPs of the UNet's attention maps (QK^T and PV) per chip per step, forward and backward,
    split by the kernel that runs them: what the TPU cost model misses inside Pallas kernels.
    The policy's and the reference's forwards, the policy's again in the backward where the
    stacked reference recomputes it, and the backward, counted as two; remat's recomputation is
    not counted."""
    step = plan.step_config
    forwards = 3 if step.stacked_reference and step.reference_backward == "recompute" else 2
    from bdpo_jax.models.attention import choose_attention

    unet, options = plan.unet_config, plan.options
    h, w = plan.sizes["h"], plan.sizes["w"]
    text = plan.sizes["text_length"]
    by_kernel: dict[str, float] = {}
    levels = len(unet.block_out_channels)

    def add(level: int, tokens: int, keys: int, count: int):
        channels = unet.block_out_channels[level]
        heads = unet.num_attention_heads[level]
        kernel = choose_attention(options.attention, options.platform, options.dtype, channels // heads, tokens, keys)
        # 2 matmuls of 2*T*S*C each, 2 images per pair, the forwards and a backward of two
        flops = 2 * 2 * tokens * keys * channels * 2 * pairs * (forwards + 2) * count
        by_kernel[kernel] = by_kernel.get(kernel, 0.0) + flops

    for level in range(levels):
        tokens = (h // 2**level) * (w // 2**level)
        layers = unet.transformer_layers_per_block[level]
        down = unet.layers_per_block[level] if unet.down_block_types[level].startswith("CrossAttn") else 0
        up_type = unet.up_block_types[levels - 1 - level]
        up = unet.layers_per_block[level] + 1 if up_type.startswith("CrossAttn") else 0
        blocks = (down + up) * layers + (layers if level == levels - 1 else 0)  # the mid block at the bottom
        add(level, tokens, tokens, blocks)  # self-attention
        add(level, tokens, text, blocks)  # cross-attention
    return by_kernel


def plan_config(
    config: ml_collections.ConfigDict, target: targets.Target, pairs_per_chip: int | None, remat: str | None
) -> ml_collections.ConfigDict:
    """The config as the plan compiles it: ``pairs_per_chip`` per micro-batch (global batch =
    pairs x chips x grad_accum) and the remat policy, where given; the mesh all FSDP."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        if pairs_per_chip is not None:
            config.train.global_batch = pairs_per_chip * target.chips * config.train.grad_accum
        if remat is not None:
            config.model.remat = remat
    return config


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A checked run's step and abstract arguments, and the plan's figures that need no compile."""

    step: Any  # jitted (state, batch, base) -> (state, metrics)
    args: tuple  # ShapeDtypeStructs on the target's shardings
    figures: dict[str, Any]
    run: trainer.RunPlan


@dataclasses.dataclass(frozen=True)
class Request:
    """One compile: a config for a target's devices. ``unet_config``: the UNet where the config
    names no base model; ``num_scorers``: where no cache says; ``stacked_reference`` False: the
    reference's forward apart from the policy's (for comparison: a run always stacks them, for an
    exactly zero margin where they are equal)."""

    config: ml_collections.ConfigDict
    target: targets.Target
    devices: list
    unet_config: UNetConfig | None = None
    num_scorers: int = 4
    stacked_reference: bool = True


def prepare(request: Request) -> Prepared:
    """Checks the config for the target's devices; the run's own step over its mesh, not yet compiled."""
    config, target, devices, stacked_reference = (
        request.config, request.target, request.devices, request.stacked_reference
    )  # fmt: skip
    run = trainer.check(config, devices, request.unet_config, request.num_scorers)
    if not stacked_reference:
        run = dataclasses.replace(run, step_config=dataclasses.replace(run.step_config, stacked_reference=False))
    mesh = sharding.make_mesh(*run.mesh_shape, run.devices)
    graphdef, state, state_shardings, base = trainer.abstract_state(run, mesh, make_optimizer(run.optimizer)[0])
    # Not kept for reuse: the compiled programs of a --fit would stay in memory.
    step = trainer.jitted_step(
        run, mesh, graphdef, state_shardings, jax.tree.map(lambda a: a.sharding, base), reuse=False
    )
    on_batch = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=on_batch) for k, v in run.abstract_batch().items()}
    chips = len(devices)
    parts = {
        "params": per_chip_bytes(state.params),
        "reference": per_chip_bytes(state.ref_params),
        "optimizer": per_chip_bytes(state.opt_state),
        "frozen base": per_chip_bytes(base),
    }
    kernels = attention_flops(run, config.train.global_batch / chips)
    figures = dict(
        target=target.name,
        device_kind=devices[0].device_kind,
        chips=chips,
        pairs_per_chip=config.train.global_batch / chips / config.train.grad_accum,
        grad_accum=config.train.grad_accum,
        remat=config.model.remat,
        attention=", ".join(sorted(k for k, v in kernels.items() if v)),
        state={k: v for k, v in parts.items() if v},
        batch=per_chip_bytes(batch),
        chip_memory=target.memory,
        peak_tflops=target.peak_tflops,
        pallas_flops=kernels.get("splash", 0.0),
    )
    return Prepared(step, (state, batch, base), figures, run)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def refused(figures: dict, seconds: float, message: str) -> Plan | None:
    """The plan of a program the TPU compiler refused for want of memory; None for any other failure."""
    if "RESOURCE_EXHAUSTED" not in message and "exceed" not in message.lower():
        return None
    reason = next((line for line in message.splitlines() if "RESOURCE_EXHAUSTED" in line), message.splitlines()[0])
    return Plan(
        **figures, arguments=0, outputs=0, aliased=0, temporaries=0, fits=False, compile_seconds=seconds,
        error=reason.strip()[:300],
    )  # fmt: skip


def from_program(figures: dict, seconds: float, memory: MemoryAnalysis, hlo: str, cost: dict | None = None) -> Plan:
    cost = cost or {}
    plan = Plan(
        **figures,
        arguments=memory.arguments,
        outputs=memory.outputs,
        aliased=memory.aliased,
        temporaries=memory.temporaries,
        fits=True,
        compile_seconds=seconds,
        flops=float(cost["flops"]) if cost.get("flops") else None,
        estimated_seconds=float(cost["optimal_seconds"]) if cost.get("optimal_seconds") else None,
        collectives=collective_bytes(hlo) if figures["chips"] > 1 else {},
        custom_calls=custom_call_counts(hlo),
    )
    plan.fits = plan.total <= plan.chip_memory
    return plan


def compile_plan(request: Request) -> Plan:
    """The config's train step compiled for the target's devices: memory, and on TPU the cost model's time."""
    prepared = prepare(request)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    try:
        options = GPU_COMPILER_OPTIONS if request.target.platform == "gpu" else None
        compiled = prepared.step.lower(*prepared.args).compile(options)
    except Exception as e:  # the TPU compiler refuses a program that does not fit its chip's memory
        plan = refused(prepared.figures, time.perf_counter() - start, str(e))
        if plan is None:
            raise
        return plan
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    plan = from_program(prepared.figures, seconds, MemoryAnalysis.of_compiled(compiled), compiled.as_text(), cost)
    model = flops.model_flops(prepared.run) / plan.chips if plan.estimated_seconds else None  # MFU's numerator
    return dataclasses.replace(plan, compile_cpu_seconds=cpu, model_flops=model)


def memory_plan(request: Request, command: list[str], timeout_s: float) -> Plan:
    """The memory of ``compile_plan``'s program without its code generation (most of a large
    compile's time): ``command`` compiles the same step in a child process with XLA's dump on,
    stopped once XLA has assigned its buffers. No time estimate (that needs the finished program)."""
    figures = prepare(request).figures
    with tempfile.TemporaryDirectory(prefix="bdpo-plan-") as folder:
        dump = Path(folder)
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()
        start, cpu_start = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
        try:
            path, seconds = until_buffer_assignment(command, dump, "step_on_mesh", timeout_s, {"XLA_FLAGS": flags})
        except CompileKilled as e:
            advice = "free memory, or compile for fewer of the slice's chips (--chips N: FSDP's share per chip grows)"
            raise PlanError(f"{e}\nThe fix: {advice}.") from None
        except RuntimeError as e:
            plan = refused(figures, time.perf_counter() - start, str(e))
            if plan is None:
                raise
            return plan
        cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_start  # the child's, once it is reaped
        hlo = path.with_name(path.name.replace("-buffer-assignment", "")).read_text()
        plan = from_program(figures, seconds, MemoryAnalysis.of_buffer_assignment(path.read_text()), hlo)
        return dataclasses.replace(plan, compile_cpu_seconds=cpu, at_peak=largest_at_peak(path))


def describe(plan: Plan) -> list[str]:
    """The plan in lines, per chip."""
    lines = [
        f"{plan.target}: {plan.chips} x {plan.device_kind}, {plan.pairs_per_chip:g} pairs per chip per micro-batch "
        f"x grad_accum {plan.grad_accum}, remat {plan.remat}, attention {plan.attention} "
        f"(compiled in {plan.compile_seconds:.0f} s, {plan.compile_cpu_seconds or 0:.0f} s of CPU)",
    ]
    if plan.error:
        return [*lines, f"  does not fit: {plan.error}"]
    lines += [f"  {name:<12} {gib(size)}" for name, size in plan.state.items()]
    lines += [
        f"  {'batch':<12} {gib(plan.batch)}",
        f"  {'temporaries':<12} {gib(plan.temporaries)}",
        f"  {'total':<12} {gib(plan.total)} of {gib(plan.chip_memory)}: {'fits' if plan.fits else 'does NOT fit'}",
    ]
    if plan.flops:
        lines.append(f"  flops        {plan.flops / 1e12:.2f} TFLOP per chip per step (XLA's count)")
    if plan.model_flops:
        lines.append(f"  model flops  {plan.model_flops / 1e12:.2f} TFLOP per chip per step (no recomputation: MFU's)")
    if plan.pallas_flops:
        lines.append(
            f"  + Pallas     {plan.pallas_flops / 1e12:.2f} TFLOP in splash attention (not in XLA's count or time; "
            f"added at the chip's peak)"
        )
    if plan.step_seconds:
        lines.append(
            f"  time         {plan.step_seconds:.3f} s per step (TPU cost model): {plan.pairs_per_second:.1f} pairs/s "
            f"per chip; of {plan.peak_tflops:g} TFLOP/s: MFU {plan.mfu or 0:.1%}, HFU {plan.hfu:.1%}"
        )
    for kind, size in plan.collectives.items():
        lines.append(f"  {kind:<12} {gib(size)} per chip per step")
    if plan.custom_calls:
        lines.append("  kernels      " + ", ".join(f"{name} x{n}" for name, n in sorted(plan.custom_calls.items())))
    if plan.at_peak:
        lines.append("  at the peak  " + ", ".join(f"{shape} {gib(size)}" for shape, size in plan.at_peak.items()))
    return lines


def fit(make_plan: Callable[[int, str], Plan], wanted: int, report: Callable[[str], None] = print) -> list[Plan]:
    """For each remat policy (least recomputation first), the largest power-of-two pairs per
    chip that fits, up to ``wanted`` (the config's batch per chip); stops at the first policy
    whose largest is ``wanted``. A policy that recomputes more keeps fewer activations, so it
    starts above the largest batch that fitted before it (each try is a compile: minutes at
    full size). ``make_plan(pairs_per_chip, remat)``: one compile."""
    best, start = [], 1
    for remat in REMAT_ORDER:
        fitted, pairs = None, start
        while pairs <= wanted:
            plan = make_plan(pairs, remat)
            for line in describe(plan):
                report(line)
            if not plan.fits:
                break
            fitted, pairs = plan, pairs * 2
        if fitted is not None:
            best.append(fitted)
            if fitted.pairs_per_chip >= wanted:
                break
            start = int(fitted.pairs_per_chip) * 2
    return best


def unet_from_flag(name: str | None) -> UNetConfig | None:
    if name is None:
        return None
    try:
        return UNetConfig.from_diffusers(unet_preset(name))
    except KeyError as e:
        raise PlanError(str(e.args[0])) from None


OWN_FLAGS = {"fit": bool, "memory_only": bool, "json": str, "pairs_per_chip": int, "config.model.remat": str}


def child_command(argv: list[str], pairs: int, remat: str) -> list[str]:
    """This command line as one compile of ``pairs`` per chip under ``remat`` (``--memory_only``'s child)."""
    kept, args = [], iter(argv[1:])
    for arg in args:
        name = arg.lstrip("-").split("=", 1)[0]
        if name.removeprefix("no") in OWN_FLAGS and OWN_FLAGS[name.removeprefix("no")] is bool:
            continue
        if name in OWN_FLAGS:
            if "=" not in arg:
                next(args, None)  # its value, given as the next argument
            continue
        kept.append(arg)
    return [sys.executable, "-m", "bdpo_jax.plan", *kept, f"--pairs_per_chip={pairs}", f"--config.model.remat={remat}"]


def main(argv: list[str]) -> None:
    from absl import flags

    from bdpo_jax import console

    console.quiet_libraries()
    f = flags.FLAGS
    target = targets.get_target(f.target)
    unet_config = unet_from_flag(f.unet)
    if f.config.base_model is None and f.config.cache is None and unet_config is None:
        raise PlanError("name the UNet: --config.base_model, --config.cache (its base model) or --unet <preset>")
    devices = targets.devices(target, f.chips)
    if f.chips:
        target = dataclasses.replace(target, name=f"{target.name} ({f.chips} of {target.chips} chips)", chips=f.chips)

    def make_plan(pairs: int | None, remat: str | None) -> Plan:
        config = plan_config(f.config, target, pairs, remat)
        request = Request(config, target, devices, unet_config, f.scorers, f.reference == "stacked")
        if not f.memory_only:
            return compile_plan(request)
        command = child_command(sys.argv, pairs or f.config.train.global_batch // target.chips, config.model.remat)
        return memory_plan(request, command, f.timeout_s)

    what = "memory of the train step (compiled up to buffer assignment)" if f.memory_only else "the train step"
    print(f"compiling {what} for {target.name} ({len(devices)} x {devices[0].device_kind}) on this CPU ...")
    if not f.fit:
        plans = [make_plan(f.pairs_per_chip, None)]
        print("\n".join(describe(plans[0])))
    else:
        plans = fit(make_plan, max(f.config.train.global_batch // target.chips, 1))
        if plans:
            best = plans[-1]
            accum = max(math.ceil(f.config.train.global_batch / (best.pairs_per_chip * best.chips)), 1)
            print(
                f"largest that fits: {best.pairs_per_chip:g} pairs per chip with remat {best.remat}; "
                f"the config's {f.config.train.global_batch} pairs per step take grad_accum {accum}"
            )
        else:
            print(f"nothing fits {target.name}, not even 1 pair per chip with remat 'full'")
    if f.json:
        with open(f.json, "w") as out:
            json.dump([p.as_dict() for p in plans], out, indent=1)


def cpu_only() -> None:
    """Before any backend starts: this process runs on its CPU (the target's devices are descriptions).
    No persistent compile cache: an executable compiled for a device that is not here is written to it but
    cannot be read back (the next plan warned "Error reading persistent compilation cache entry")."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_compilation_cache", False)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from bdpo_jax import errors

    config_flags.DEFINE_config_file("config", None, "A configs/train/*.py file.", lock_config=True)
    flags.DEFINE_enum("target", None, list(targets.TARGETS), "The slice or GPU to compile for.")
    flags.DEFINE_bool("fit", False, "Find the largest pairs per chip (and remat policy) that fit.")
    flags.DEFINE_string("unet", None, "A UNet preset (sd15, sd21, sdxl, ...) where no base model is given.")
    flags.DEFINE_integer("pairs_per_chip", None, "Pairs per chip per micro-batch (default: the config's batch).")
    flags.DEFINE_integer("chips", None, "Compile for the slice's first N chips only (default: all).")
    flags.DEFINE_integer("scorers", 4, "Scorers in the batch where no cache says (the paper's four).")
    flags.DEFINE_bool("memory_only", False, "Memory only, from a compile stopped at buffer assignment (minutes).")
    flags.DEFINE_float("timeout_s", 3600, "--memory_only: give up on a compile after this long.")
    flags.DEFINE_enum(
        "reference", "stacked", ["stacked", "two_forward"], "two_forward: compare the reference's forward apart"
    )
    flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
    flags.mark_flags_as_required(["config", "target"])
    cpu_only()
    errors.run(main)
