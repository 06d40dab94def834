"""Our Flax UNet against diffusers' PyTorch UNet, on the same weights and inputs.

    python -m bench.parity                        # tiny SD1, SD2 and SDXL UNets, random weights
    python -m bench.parity --unet /path/to/sd15   # a real diffusers UNet or pipeline directory

For each UNet: diffusers' ``save_pretrained`` -> our importer -> both forwards on
the same random inputs -> our exporter -> diffusers' ``from_pretrained`` -> the
state dict compared with the original, tensor by tensor. Needs the PyTorch side
(``pip install 'bdpo[dev]'``).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from diffusers import UNet2DConditionModel as TorchUNet
from flax import nnx

from bdpo_jax.models import ModelOptions, UNet2DConditionModel, UNetConfig, load_unet, save_unet
from bdpo_jax.models.presets import unet_preset
from bdpo_jax.models.unet_files import find_unet_dir


def random_diffusers_unet(config: Mapping[str, Any], seed: int = 0) -> TorchUNet:
    """A diffusers UNet with every parameter random, norms and biases included
    (their defaults, ones and zeros, would hide a swapped scale or bias)."""
    torch.manual_seed(seed)
    unet = TorchUNet.from_config(dict(config)).eval()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif param.ndim == 1:  # norm scale
                param.normal_(1.0, 0.1)
    return unet


def random_inputs(
    config: UNetConfig, batch: int = 2, size: int | tuple[int, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """NHWC latents, timesteps, text states (and SDXL's pooled text and time ids)."""
    rng = np.random.default_rng(seed)
    height, width = _latent_size(size or config.sample_size or 64)
    inputs = {
        "sample": rng.standard_normal((batch, height, width, config.in_channels), np.float32),
        "timesteps": rng.integers(0, 1000, batch).astype(np.int32),
        "encoder_hidden_states": rng.standard_normal((batch, 8, config.cross_attention_dim[0]), np.float32),
    }
    if config.addition_embed_type == "text_time":
        inputs["text_embeds"] = rng.standard_normal((batch, config.pooled_text_dim), np.float32)
        # original size, crop top-left, target size: in pixels (8 per latent)
        pixels = [8 * height, 8 * width]
        inputs["time_ids"] = np.tile(np.array([*pixels, 0, 0, *pixels], np.float32), (batch, 1))
    return inputs


def _latent_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def torch_forward(unet: TorchUNet, inputs: Mapping[str, np.ndarray], dtype: torch.dtype = torch.float32) -> np.ndarray:
    device = next(unet.parameters()).device

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(inputs[name]).to(device)

    added = None
    if "text_embeds" in inputs:
        added = {"text_embeds": t("text_embeds").to(dtype), "time_ids": t("time_ids").to(dtype)}
    with torch.no_grad():
        out = unet(
            t("sample").permute(0, 3, 1, 2).to(dtype),
            t("timesteps"),
            t("encoder_hidden_states").to(dtype),
            added_cond_kwargs=added,
        ).sample
    return out.permute(0, 2, 3, 1).float().cpu().numpy()


def jax_forward(model: UNet2DConditionModel, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    graphdef, params = nnx.split(model)

    @jax.jit
    def forward(params, inputs):
        return nnx.merge(graphdef, params)(**inputs)

    return np.asarray(forward(params, {k: jnp.asarray(v) for k, v in inputs.items()}))


def state_dict_differences(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys present in one only, or whose tensors are not bitwise equal."""
    diffs = sorted(set(a) ^ set(b))
    diffs += [k for k in sorted(set(a) & set(b)) if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    return diffs


@dataclasses.dataclass
class ParityReport:
    name: str
    max_abs_error: float
    output_scale: float
    export_missing: list[str]
    export_unexpected: list[str]
    export_differences: list[str]

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.output_scale, 1e-12)

    def ok(self, tolerance: float = 1e-4) -> bool:
        return self.relative_error <= tolerance and not (
            self.export_missing or self.export_unexpected or self.export_differences
        )


def check_roundtrip(
    name: str,
    unet: TorchUNet,
    workdir: Path,
    opts: ModelOptions = ModelOptions(),
    size: int | tuple[int, int] | None = None,
) -> ParityReport:
    """diffusers -> JAX -> diffusers for one UNet, with both forwards compared."""
    src, out = workdir / f"{name}-diffusers", workdir / f"{name}-exported"
    unet.save_pretrained(src)
    model = load_unet(src, opts)
    inputs = random_inputs(model.config, size=size)
    ours, theirs = jax_forward(model, inputs), torch_forward(unet, inputs)
    save_unet(model.config, nnx.state(model, nnx.Param), out)
    reloaded, info = TorchUNet.from_pretrained(out, output_loading_info=True)
    return ParityReport(
        name=name,
        max_abs_error=float(np.abs(ours - theirs).max()),
        output_scale=float(np.abs(theirs).max()),
        export_missing=list(info["missing_keys"]),
        export_unexpected=list(info["unexpected_keys"]),
        export_differences=state_dict_differences(unet.state_dict(), reloaded.state_dict()),
    )


FLAGS = flags.FLAGS
flags.DEFINE_list("presets", ["tiny-sd1", "tiny-sd2", "tiny-sdxl"], "UNet presets to build with random weights.")
flags.DEFINE_string("unet", None, "A diffusers UNet or pipeline directory to check instead of the presets.")
flags.DEFINE_integer("latent_size", None, "Latent height and width of the test inputs (default: the config's).")


def main(argv: list[str]) -> None:
    del argv
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        if FLAGS.unet:
            unets = {Path(FLAGS.unet).name: TorchUNet.from_pretrained(find_unet_dir(FLAGS.unet)).eval()}
        else:
            unets = {name: random_diffusers_unet(unet_preset(name)) for name in FLAGS.presets}
        for name, unet in unets.items():
            start = time.perf_counter()
            report = check_roundtrip(name, unet, Path(tmp), size=FLAGS.latent_size)
            reports.append(report)
            n_params = sum(p.numel() for p in unet.parameters())
            print(
                f"{name:>10}: {n_params / 1e6:8.2f}M params | forward max|ours - diffusers| = "
                f"{report.max_abs_error:.2e} (output scale {report.output_scale:.2f}, "
                f"relative {report.relative_error:.1e}) | export: {len(report.export_missing)} missing, "
                f"{len(report.export_unexpected)} unexpected, {len(report.export_differences)} tensors differ "
                f"| {'OK' if report.ok() else 'FAIL'} ({time.perf_counter() - start:.1f}s)"
            )
    if not all(r.ok() for r in reports):
        raise SystemExit("parity FAILED")
    print("parity OK: fp32 forward within 1e-4 of the output scale, export reloads bit-exact in diffusers")


if __name__ == "__main__":
    app.run(main)
