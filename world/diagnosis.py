"""Does the small world's base follow its prompts, and if not, where is the
text lost? Three measurements on a pipeline directory (and its caches):

- ``conditioning_losses``: the UNet's diffusion loss on fresh renders of
  unseen prompts with their own caption, another prompt's caption and the
  empty one. Equal losses: the UNet ignores its text states.
- ``cache_alignment``: a cache's text states against the pipeline's text
  encoder run on each pair's caption now, and its latents against the VAE run
  on the source images: a cache whose rows do not match their captions trains
  a UNet that cannot follow them.
- ``attribute_accuracy``: of sampled images, the share whose object has the
  prompt's colour, shape, place and background (nearest of the grammar's), at
  guidance 1 and at the world's guidance (equal: the sampler's prompt does nothing).

And, on a draw's pairs and evaluation, why a trained model wins or loses a metric:

- ``size_preferences``: on the preference pairs, how often each scorer, the
  hidden human and the vote prefer the larger of the two objects (a direction
  all voters but one share is one the vote mostly takes).
- ``sample_spread``: per model of the world's evaluation, each metric's mean,
  its spread over a prompt's N images and the object's size (best-of-N
  rewards spread: a model whose images are better on average but alike can lose it).

    python -m world.diagnosis --draw workdirs/world/draw-0 [--prompt_set validation]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from absl import flags
from PIL import Image

from bdpo_jax import errors
from bdpo_jax.errors import UserError
from world import scene as world
from world.settings import HIDDEN_HUMAN, WORLD_SCORERS

# Each attribute a prompt names, and the grammar's table of its values.
TABLES = {"colour": world.COLOURS, "shape": world.SHAPES, "position": world.POSITIONS, "background": world.BACKGROUNDS}
ATTRIBUTES = tuple(TABLES)


def _nearest(value: np.ndarray | float, table: dict) -> str:
    return min(table, key=lambda name: float(np.linalg.norm(np.asarray(table[name], np.float32) - value)))


def read_attributes(image: Image.Image) -> dict[str, str]:
    """The grammar's nearest colour, shape, place and background of what an image shows."""
    reading = world.measure(image)
    if reading.area == 0:
        return {}
    seen = (reading.object_colour, reading.fill, reading.centre, reading.background)
    return {name: _nearest(value, TABLES[name]) for name, value in zip(ATTRIBUTES, seen, strict=True)}


def attribute_accuracy(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """Share of images showing each attribute their prompt names (no object: wrong on all)."""
    hits = {name: 0 for name in ATTRIBUTES}
    for image, prompt in zip(images, prompts, strict=True):
        wanted, seen = world.parse_prompt(prompt), read_attributes(image)
        for name in ATTRIBUTES:
            hits[name] += seen.get(name) == getattr(wanted, name)
    return {name: hits[name] / max(len(prompts), 1) for name in ATTRIBUTES}


@torch.no_grad()
def text_separation(base: str | Path, prompts: Sequence[str]) -> float:
    """How far the base's text states move when one word of a prompt changes:
    the mean over prompts and attributes of the largest per-position mean
    absolute change, in units of the states' std (0: the UNet cannot tell the prompts apart)."""
    from scorers_torch.encoders import BaseModelEncoders

    encoders = BaseModelEncoders(base, device="cpu", dtype=torch.float32)
    originals, changed = [], []
    for prompt in prompts:
        attributes = world.parse_prompt(prompt)
        for name, table in TABLES.items():
            other = next(v for v in table if v != getattr(attributes, name))
            originals.append(prompt)
            changed.append(dataclasses.replace(attributes, **{name: other}).prompt)
    states = encoders.encode_text(originals + changed)[0].astype(np.float32)
    first, second = states[: len(originals)], states[len(originals) :]
    return float((np.abs(first - second).mean(-1).max(-1) / states.std()).mean())


@torch.no_grad()
def conditioning_losses(
    base: str | Path,
    prompts: Sequence[str],
    renders_per_prompt: int = 4,
    timesteps: Sequence[int] = (100, 300, 500, 700, 900),
    seed: int = 0,
) -> dict[str, float]:
    """Mean diffusion loss (the base's prediction target) on renders of ``prompts``
    with the right caption, a wrong one (another prompt's) and the empty one."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from scorers_torch.encoders import BaseModelEncoders

    base = Path(base)
    encoders = BaseModelEncoders(base, device="cpu", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(base / "unet").eval()
    scheduler = DDPMScheduler.from_pretrained(base / "scheduler")
    rng = np.random.default_rng(seed)
    captions = [p for p in prompts for _ in range(renders_per_prompt)]
    images = [world.render(world.parse_prompt(p), rng) for p in captions]
    latents = torch.from_numpy(encoders.encode_images(images).astype(np.float32)).permute(0, 3, 1, 2)
    others = [prompts[(prompts.index(p) + 1 + rng.integers(len(prompts) - 1)) % len(prompts)] for p in captions]
    texts = {
        name: torch.from_numpy(encoders.encode_text(list(c))[0].astype(np.float32))
        for name, c in (("right", captions), ("wrong", others), ("empty", [""] * len(captions)))
    }
    generator = torch.Generator().manual_seed(seed)
    losses = {name: [] for name in texts}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        step = torch.full((len(latents),), int(t))
        noisy = scheduler.add_noise(latents, noise, step)
        target = (
            noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, step)
        )
        for name, text in texts.items():
            prediction = unet(noisy, step, encoder_hidden_states=text).sample
            losses[name].append((prediction - target).square().mean().item())
    return {name: float(np.mean(values)) for name, values in losses.items()}


@torch.no_grad()
def cache_alignment(cache: str | Path, base: str | Path, source: str | Path, max_pairs: int = 64) -> dict[str, float]:
    """Largest difference between a cache's rows and the base's encoders run
    now on their source pairs: text states against the pair's caption, latents
    against image 0 and image 1 (fp16 rounding is ~1e-3 of their scale)."""
    import pyarrow.parquet as pq

    from bdpo_jax import cache as cache_format
    from scorers_torch.encoders import BaseModelEncoders
    from scorers_torch.pickapic import decode_image

    encoders = BaseModelEncoders(base, device="cpu", dtype=torch.float32)
    table = pq.read_table(source).to_pydict()
    manifest = cache_format.read_manifest(cache)
    shard = cache_format.open_shards(str(cache), manifest)[0]
    rows = np.arange(min(max_pairs, len(shard["label"])))
    source_rows = np.asarray(shard["source_row"])[rows]
    captions = [table["caption"][r] for r in source_rows]
    cached_text = np.asarray(shard["text_states"])[np.asarray(shard["caption_id"])[rows]].astype(np.float32)
    text = encoders.encode_text(captions)[0].astype(np.float32)
    out = {"text_states": float(np.abs(cached_text - text).max() / np.abs(text).max())}
    for side in (0, 1):
        images = [decode_image(table[f"jpg_{side}"][r]) for r in source_rows]
        fresh = encoders.encode_images(images).astype(np.float32)
        cached = np.asarray(shard[f"latents_{side}"])[rows].astype(np.float32)
        out[f"latents_{side}"] = float(np.abs(cached - fresh).max() / np.abs(fresh).max())
    return out


def sample_accuracy(base: str | Path, prompts: Sequence[str], guidance: float, steps: int, seed: int = 0):
    """Attribute accuracy of one sample per prompt at a guidance scale (same seeds at every scale)."""
    from scorers_torch.evaluation.generate import describe_model, generate, load_pipeline

    info = describe_model("base", str(base))
    pipeline = load_pipeline(info, torch.device("cpu"), torch.float32)
    seeds = [seed + i for i in range(len(prompts))]
    images = generate(pipeline, info, list(prompts), seeds, guidance, steps)
    return attribute_accuracy(images, prompts), images


def size_preferences(pairs: str | Path) -> dict[str, float]:
    """On a world pairs file: of the pairs whose objects differ in size, the share in which each scorer,
    the hidden human's utility and the scorers' vote (on the pairs it decides) prefer the larger object."""
    import pyarrow.parquet as pq

    from scorers_torch.pickapic import decode_image
    from scorers_torch.scorers import build_scorer
    from scorers_torch.votes import majority_vote
    from world.scorers import read
    from world.settings import preprocess_config

    table = pq.read_table(pairs, columns=["caption", "jpg_0", "jpg_1"]).to_pydict()
    images = [[decode_image(data) for data in table[k]] for k in ("jpg_0", "jpg_1")]
    area = np.array([[read(image).area for image in side] for side in images]).T  # (pairs, 2)
    names = (*WORLD_SCORERS, HIDDEN_HUMAN)
    # (pairs, scorers, 2), the preprocessing job's layout
    scores = np.stack(
        [np.stack([build_scorer(n).score(side, table["caption"]) for side in images], -1) for n in names], 1
    )
    first_larger, sized = area[:, 0] > area[:, 1], area[:, 0] != area[:, 1]

    def share(prefers_first: np.ndarray, decided: np.ndarray) -> float:
        return float((prefers_first == first_larger)[decided].mean()) if decided.any() else float("nan")

    shares = {
        name: share(scores[:, k, 0] > scores[:, k, 1], sized & (scores[:, k, 0] != scores[:, k, 1]))
        for k, name in enumerate(names)
    }
    vote = majority_vote(scores[:, : len(WORLD_SCORERS)], preprocess_config().tie_policy)
    return shares | {"vote": share(vote.label > 0, sized & vote.keep)}


def sample_spread(evaluation: str | Path) -> dict[str, dict[str, float]]:
    """Per model of an evaluation folder: each metric's mean over images, mean over prompts (of every
    prompt set) of its standard deviation over the prompt's N images (``<metric> sd``), and the
    object's mean area."""
    from scorers_torch.evaluate import read_scores
    from scorers_torch.evaluation.outputs import OutputDir, read_image, under
    from world.scorers import read

    output = OutputDir(evaluation)
    columns = read_scores(output.scores)
    metrics = [k for k in columns if columns[k].dtype.kind == "f"]
    found = {}
    for model in dict.fromkeys(columns["model"]):
        rows = columns["model"] == model
        sets, indices = columns["prompt_set"][rows], columns["prompt_index"][rows]
        prompt = np.array([f"{s}/{i}" for s, i in zip(sets, indices, strict=True)])  # one key per prompt
        row = {}
        for metric in metrics:
            values = columns[metric][rows].astype(np.float64)
            row[metric] = float(values.mean())
            row[f"{metric} sd"] = float(np.mean([values[prompt == p].std() for p in np.unique(prompt)]))
        areas = [read(read_image(under(output.root, image))).area for image in columns["image"][rows]]
        found[model] = row | {"object area": float(np.mean(areas))}
    return found


def main(argv: list[str]) -> None:
    del argv
    from world import settings
    from world.configs.world import get_config
    from world.stages import quiet_diffusers

    quiet_diffusers()
    args = flags.FLAGS
    draw = Path(args.draw)
    base = draw / "base"
    if not (base / "model_index.json").is_file():
        raise UserError(f"{draw} has no base model ({base}): give a draw folder of world.demo or world.replicate")
    sampler = get_config("demo").sampler
    prompts = settings.prompts(get_config("demo"), args.prompt_set, args.prompts)
    print(f"text states: one changed word moves them by {text_separation(base, prompts):.2f} std")
    losses = conditioning_losses(base, prompts)
    print(f"diffusion loss on renders of {args.prompt_set} prompts, by caption: "
          + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))  # fmt: skip
    renders = [world.render(world.parse_prompt(p), np.random.default_rng(i)) for i, p in enumerate(prompts)]
    print("attribute accuracy of renders: " + _fmt(attribute_accuracy(renders, prompts)))
    for guidance in sorted({1.0, sampler.guidance_scale}):
        accuracy, _ = sample_accuracy(base, prompts, guidance, sampler.steps)
        print(f"attribute accuracy of samples at guidance {guidance:g}: " + _fmt(accuracy))
    for name, cache, source, encoders in (
        ("pretraining", draw / "pretrain" / "cache", draw / "pretrain" / "renders.parquet", draw / "pretrain" / "init"),
        ("pairs", draw / "pairs" / "cache", draw / "pairs" / "pairs.parquet", base),
    ):
        if (cache / "manifest.json").is_file():
            found = cache_alignment(cache, encoders, source)
            print(f"{name} cache against its source, max relative difference: " + _fmt(found, "{:.2e}"))
    if (draw / "pairs" / "pairs.parquet").is_file():
        shares = size_preferences(draw / "pairs" / "pairs.parquet")
        print("of the pairs, the share in which each prefers the larger object: " + _fmt(shares))
    for evaluation in sorted(draw.glob("eval-*")):
        if (evaluation / "scores.parquet").is_file():
            print(f"{evaluation}: per model, each metric's mean and spread over a prompt's images (sd)")
            for model, row in sample_spread(evaluation).items():
                print(f"  {model}: " + _fmt(row, "{:.4g}"))


def _fmt(values: dict[str, float], spec: str = "{:.0%}") -> str:
    return ", ".join(f"{k} {spec.format(v)}" for k, v in values.items())


if __name__ == "__main__":
    flags.DEFINE_string("draw", None, "A draw folder of the world (WORKDIR/draw-SEED), with its base/.")
    flags.DEFINE_enum("prompt_set", "validation", ["validation", "test"], "Unseen prompts to measure on.")
    flags.DEFINE_integer("prompts", 40, "How many of them (0: all).")
    flags.mark_flag_as_required("draw")
    errors.run(main)
