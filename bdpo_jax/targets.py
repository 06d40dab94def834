"""The chips a step can be compiled for without the hardware: TPU slices through
libtpu's topology descriptions, NVIDIA GPUs through XLA's GPU target config,
both from this process's CPU (``bdpo_jax.plan``).

A GPU target's config is written here from the chip's published figures (SM
count, memory, bandwidth, caches); XLA's GPU compiler plans memory and fuses
from them, and skips autotuning without a device, so a GPU compile's memory is
trusted and its speed is not (XLA gives no time estimate for GPUs).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax

from bdpo_jax.errors import UserError

GB = 10**9
GIB = 2**30


class TargetError(UserError):
    """A target this process cannot compile for (an unknown name, a missing compiler plugin)."""


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """What XLA's GPU compiler needs to know of a chip (``GpuTargetConfigProto``)."""

    compute_capability: tuple[int, int]
    sms: int
    memory_bandwidth: int  # bytes/s
    l2_cache: int  # bytes
    clock_ghz: float
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int

    def target_config(self, name: str, memory: int) -> str:
        """The chip as a text ``GpuTargetConfigProto``."""
        major, minor = self.compute_capability
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  shared_memory_per_core: {self.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {self.sms}
  fpus_per_core: {128 if major >= 9 else 64}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {self.memory_bandwidth}
  l2_cache_size: {self.l2_cache}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {memory}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 patch: 0 }}
device_description_str: "{name}"
"""


@dataclasses.dataclass(frozen=True)
class Target:
    """One slice or one GPU: its chips, each chip's memory and dense bf16 peak."""

    name: str
    device_kind: str  # as jax names the chip
    chips: int
    memory: int  # bytes per chip
    peak_tflops: float  # dense bf16 per chip
    topology: str | None = None  # TPU: libtpu's topology name
    gpu: GpuSpec | None = None

    @property
    def platform(self) -> str:
        return "tpu" if self.topology else "gpu"


_HOPPER = dict(compute_capability=(9, 0), sms=132, l2_cache=50 * 2**20, clock_ghz=1.98)
_HOPPER_SMEM = dict(shared_memory_per_sm=233472, shared_memory_per_block_optin=232448)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("v4-8", "TPU v4", 4, 32 * GIB, 275.0, topology="v4:2x2x1"),
        Target("v5e-8", "TPU v5 lite", 8, 16 * GIB, 197.0, topology="v5e:2x4"),
        Target("v5e-16", "TPU v5 lite", 16, 16 * GIB, 197.0, topology="v5e:4x4"),
        Target("v5p-8", "TPU v5", 4, 95 * GIB, 459.0, topology="v5p:2x2x1"),
        Target("v5p-128", "TPU v5", 64, 95 * GIB, 459.0, topology="v5p:4x4x4"),
        Target("v6e-8", "TPU v6 lite", 8, 32 * GIB, 918.0, topology="v6e:2x4"),
        Target(
            "h100",
            "NVIDIA H100 80GB HBM3",
            1,
            81559 * 2**20,
            989.0,
            gpu=GpuSpec(memory_bandwidth=3_352_320_000_000, **_HOPPER, **_HOPPER_SMEM),
        ),
        Target(
            "h200",
            "NVIDIA H200",
            1,
            143771 * 2**20,
            989.0,
            gpu=GpuSpec(memory_bandwidth=4_800_000_000_000, **_HOPPER, **_HOPPER_SMEM),
        ),
        Target(
            "a100-80",
            "NVIDIA A100-SXM4-80GB",
            1,
            81920 * 2**20,
            312.0,
            gpu=GpuSpec(
                compute_capability=(8, 0),
                sms=108,
                memory_bandwidth=2_039_000_000_000,
                l2_cache=40 * 2**20,
                clock_ghz=1.41,
                shared_memory_per_sm=167936,
                shared_memory_per_block_optin=166912,
            ),
        ),
    )
}

EXTRAS = {"tpu": ("libtpu", "plan-tpu"), "gpu": ("jax_cuda12_plugin", "plan-gpu")}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise TargetError(f"target {name!r}: choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def require_compiler(platform: str) -> None:
    """The compiler plugin a platform needs, or an error naming the extra that installs it."""
    module, extra = EXTRAS[platform]
    if importlib.util.find_spec(module) is None:
        raise TargetError(
            f"compiling for a {platform.upper()} needs {module}, which is not installed: "
            f"pip install -e '.[{extra}]' (it matches the installed jax)"
        )


def devices(target: Target, chips: int | None = None) -> list:
    """The target's devices as this process sees them without the hardware: enough to lower
    and compile for them, not to run. ``chips``: the first that many (a sub-slice).
    Needs jax's platforms to be 'cpu' (``bdpo_jax.plan`` sets it), so that no backend
    tries to open a device that is not there."""
    from jax.experimental import topologies

    require_compiler(target.platform)
    if jax.config.jax_platforms != "cpu":
        raise TargetError("compiling for a target without its hardware needs JAX_PLATFORMS=cpu in this process")
    if target.platform == "tpu":
        # libtpu locks /tmp/libtpu_lockfile so that one process owns the chips; a description opens none,
        # and two plans (or a plan and a test) may compile side by side
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        found = topologies.get_topology_desc(topology_name=target.topology, platform="tpu").devices
    else:
        config = target.gpu.target_config(target.device_kind, target.memory)
        found = topologies.get_topology_desc(platform="cuda", target_config=config, topology="1x1x1").devices
    found = list(found)[: chips or target.chips]
    if len(found) != (chips or target.chips):
        raise TargetError(f"target {target.name} gave {len(found)} devices; expected {chips or target.chips}")
    return found
