"""Where a diffusers UNet's weights are: the UNet directory (or a pipeline's
``unet/``), and which safetensors files hold which tensors (one file, a
variant such as ``.fp16``, or shards with an index). No JAX: the train
command's checks and a workdir's base-model record read it too."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bdpo_jax.errors import UserError

WEIGHTS_NAME = "diffusion_pytorch_model"
# diffusion_pytorch_model.fp16.safetensors, ...fp16-00001-of-00002.safetensors, ...safetensors.index.fp16.json
_VARIANT_FILE = re.compile(
    rf"^{WEIGHTS_NAME}(?:\.(\w+?)(?:-\d+-of-\d+)?\.safetensors|\.safetensors\.index\.(\w+)\.json)$"
)


class WeightsError(UserError):
    """Weights on disk do not fit the UNet they are loaded into."""


def find_unet_dir(path: str | os.PathLike) -> Path:
    """A UNet directory, or a pipeline directory whose ``unet/`` is taken."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"UNet path {path} is not a directory (expected a diffusers UNet or pipeline).")
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"{path} holds neither config.json (a diffusers UNet directory) nor unet/config.json "
        "(a diffusers pipeline directory)."
    )


def weight_files(unet_dir: Path, variant: str | None = None) -> dict[str, Path]:
    """Maps each tensor name to its safetensors file: one file or an index of shards."""
    suffix = f".{variant}" if variant else ""
    single = unet_dir / f"{WEIGHTS_NAME}{suffix}.safetensors"
    # diffusers writes a variant's index as diffusion_pytorch_model.safetensors.index.fp16.json
    index_names = [f"{WEIGHTS_NAME}.safetensors.index{suffix}.json"]
    if single.is_file():
        from safetensors import safe_open

        try:
            with safe_open(single, framework="numpy") as f:
                return dict.fromkeys(f.keys(), single)
        except Exception as e:  # safetensors raises its own error types, and OSError
            raise WeightsError(f"cannot read weights file {single}: {e}. Download or convert it again.") from e
    for name in index_names:
        index = unet_dir / name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {key: unet_dir / shard for key, shard in weight_map.items()}
            absent = sorted({str(f) for f in files.values() if not f.is_file()})
            if absent:
                raise FileNotFoundError(f"{index} names shards that are not there: {absent}")
            return files
    present = sorted(p.name for p in unet_dir.iterdir() if p.suffix in (".safetensors", ".json", ".bin"))
    variants = sorted({m.group(1) or m.group(2) for name in present if (m := _VARIANT_FILE.match(name))})
    hint = ""
    if variants and variant is None:
        hint = f" This directory has the variant(s) {variants}: pass variant={variants[0]!r}."
    elif any(name.endswith(".bin") for name in present):
        hint = (
            " Only PyTorch .bin weights are there; re-save them as safetensors "
            "(diffusers: UNet2DConditionModel.from_pretrained(dir).save_pretrained(dir))."
        )
    raise FileNotFoundError(f"No {single.name} (or sharded index) in {unet_dir}; found {present}.{hint}")
