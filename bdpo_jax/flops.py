"""FLOPs of a step by XLA's cost analysis, and model FLOP utilisation against
the device's dense bf16 peak."""

from __future__ import annotations

from typing import Any

from bdpo_jax.targets import TARGETS

# Dense bf16 peak per device, TFLOP/s, by the device kind jax names (a v5p chip compiled for without
# the hardware is "TPU v5"); a device not listed reports no MFU.
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
    """TFLOP/s per device, and MFU where the device's peak is known."""
    if not flops:
        return {}
    tflops = flops * steps_per_s / 1e12 / num_devices
    peak = peak_tflops(device_kind)
    return {"tflops_per_s_per_device": tflops} | ({"mfu": tflops / peak} if peak else {})
