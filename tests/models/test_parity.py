"""Our UNet against diffusers' PyTorch UNet: same weights, same inputs, same outputs;
and our export loads back into diffusers unchanged.

fp32 agreement is ~1e-6 of the output scale. The bound is 1e-5, ten times that
and ten times tighter than the 1e-4 we promise users: at 1e-4 a GEGLU with
tanh-approximate GELU (4e-5) or a GroupNorm eps of 1e-5 for 1e-6 (2e-5) passes.

SD1's latents are not square (8 x 24): height and width swapped anywhere (a
reshape in attention, a transpose of the layout) fails there, where a square
input would pass; SD2 and SDXL run at their square sample size.
"""

import pytest

from bdpo_jax.models.presets import unet_preset
from bench.parity import check_roundtrip, random_diffusers_unet

TOLERANCE = 1e-5


@pytest.mark.parametrize(("name", "size"), [("tiny-sd1", (8, 24)), ("tiny-sd2", None), ("tiny-sdxl", None)])
def test_diffusers_to_jax_to_diffusers(name, size, tmp_path):
    report = check_roundtrip(name, random_diffusers_unet(unet_preset(name), seed=1), tmp_path, size=size)
    assert report.output_scale > 0.1  # a real signal, not a dead network
    assert report.max_abs_error <= TOLERANCE * report.output_scale, report
    assert report.export_missing == []
    assert report.export_unexpected == []
    assert report.export_differences == []
