"""Images from diffusers pipelines, with initial noise shared across models.

Image i of prompt p gets a seed derived from (run seed, prompt set, p, i). The
initial latents are drawn from that seed by a torch CPU generator, here, and
passed to the pipeline with ``latents=``; the same generator, continued, drives
any stochastic sampler steps. So every model starts image i of prompt p from
the same noise (a paired comparison), and a model compared with itself makes
bit-identical images. This is what a pipeline does itself when given one CPU
generator per image, except that the noise is drawn in float32 before casting.

A model is described from its JSON files before any weight is read: pipeline
class, family (SD1.x, SD2.x, SDXL by UNet cross-attention width), resolution
and latent shape; models compared with each other must agree on these.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bdpo_jax.errors import UserError
from bdpo_jax.workdir import EXPORT_RECORD_NAME

# Text-to-image pipeline classes, and their family by the UNet's cross-attention width.
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": {768: "sd1", 1024: "sd2"},
    "StableDiffusionXLPipeline": {2048: "sdxl"},
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PipelineError(UserError):
    """A model directory is not a diffusers text-to-image pipeline we can sample from."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    pipeline_class: str
    family: str
    resolution: int
    latent_shape: tuple[int, int, int]  # (channels, height, width) of the initial noise
    export: dict | None = None  # bdpo_jax.export's record (run and step) where the pipeline is our export

    def describe(self) -> dict[str, Any]:
        """What the output folder checks: a model re-exported from another step is another model."""
        described = {
            "path": str(self.path),
            "pipeline_class": self.pipeline_class,
            "family": self.family,
            "resolution": self.resolution,
            "latent_shape": list(self.latent_shape),
        }
        return described | ({"export": self.export} if self.export else {})


def describe_model(name: str, path: str, resolution: int | None = None) -> ModelInfo:
    """Checks that ``path`` is a pipeline directory with every part it names; reads no weights."""
    directory = Path(path).expanduser()
    where = f"model {name!r} (--config.models.{name}={path})"
    index_file = directory / "model_index.json"
    if not index_file.is_file():
        raise PipelineError(
            f"{where}: {directory} is not a diffusers pipeline directory (no model_index.json); give the folder "
            "that DiffusionPipeline.save_pretrained wrote (a local stable-diffusion-v1-5, a bdpo_jax.export output)"
        )
    index = json.loads(index_file.read_text())
    pipeline_class = index.get("_class_name")
    if pipeline_class not in PIPELINE_FAMILIES:
        raise PipelineError(
            f"{where}: pipeline class {pipeline_class!r} is not one we evaluate; supported: {sorted(PIPELINE_FAMILIES)}"
        )
    parts = [key for key, value in index.items() if not key.startswith("_") and _is_component(value)]
    missing = [part for part in parts if not (directory / part).is_dir()]
    if missing:
        raise PipelineError(f"{where}: model_index.json names {missing} but {directory} has no such folder(s)")
    unet = json.loads(_config_file(directory, "unet", where).read_text())
    vae = json.loads(_config_file(directory, "vae", where).read_text())
    width = unet.get("cross_attention_dim")
    family = PIPELINE_FAMILIES[pipeline_class].get(width, f"{pipeline_class}(cross_attention_dim={width})")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    resolution = resolution or unet["sample_size"] * factor
    if resolution % factor:
        raise PipelineError(f"{where}: resolution {resolution} is not a multiple of the VAE's factor {factor}")
    latent_shape = (unet["in_channels"], resolution // factor, resolution // factor)
    record = directory / EXPORT_RECORD_NAME
    export = json.loads(record.read_text()) if record.is_file() else None
    return ModelInfo(name, directory.resolve(), pipeline_class, family, resolution, latent_shape, export)


def _is_component(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and value[0] is not None


def _config_file(directory: Path, part: str, where: str) -> Path:
    path = directory / part / "config.json"
    if not path.is_file():
        raise PipelineError(f"{where}: {directory} has no {part}/config.json")
    return path


def check_comparable(a: ModelInfo, b: ModelInfo, allow_mixed_families: bool) -> None:
    if (a.family, a.latent_shape) == (b.family, b.latent_shape) or allow_mixed_families:
        return
    raise PipelineError(
        f"comparison {a.name}:{b.name}: {a.name} is {a.family} with latents {a.latent_shape} and {b.name} is "
        f"{b.family} with latents {b.latent_shape}. A paired comparison needs one family and one latent shape "
        "(the same initial noise for both); compare a base model with its fine-tunes, set --config.resolution, "
        "or set --config.allow_mixed_families=True to tabulate it anyway"
    )


def image_seed(run_seed: int, prompt_set: str, prompt_index: int, image_index: int) -> int:
    """A 31-bit seed per (prompt set, prompt, image), the same for every model."""
    entropy = [run_seed, zlib.crc32(prompt_set.encode()), prompt_index, image_index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


def initial_latents(seeds: Sequence[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial noise per seed, float32 on the CPU, and each seed's generator, continued, for the sampler."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    return torch.stack([torch.randn(shape, generator=g) for g in generators]), generators


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_pipeline(info: ModelInfo, device: torch.device, dtype: torch.dtype, scheduler: str | None = None):
    """The pipeline class named in model_index.json, safety checker off, on ``device``."""
    import diffusers

    cls = getattr(diffusers, info.pipeline_class)
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        kwargs |= {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipeline = cls.from_pretrained(info.path, **kwargs)
    except Exception as e:  # a corrupt or incomplete weight file, a config diffusers rejects
        raise PipelineError(f"model {info.name!r}: diffusers cannot load {info.path}: {type(e).__name__}: {e}") from e
    if scheduler:
        if not hasattr(diffusers, scheduler):
            raise PipelineError(f"sampler.scheduler {scheduler!r} is not a diffusers scheduler class")
        pipeline.scheduler = getattr(diffusers, scheduler).from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


@torch.inference_mode()
def generate(
    pipeline, info: ModelInfo, prompts: Sequence[str], seeds: Sequence[int], guidance_scale: float, steps: int
) -> list[Image.Image]:
    """One image per (prompt, seed), in one pipeline call."""
    latents, generators = initial_latents(seeds, info.latent_shape)
    output = pipeline(
        prompt=list(prompts),
        latents=latents.to(pipeline.device, pipeline.unet.dtype),
        generator=generators,
        height=info.resolution,
        width=info.resolution,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="pil",
    )
    return output.images
