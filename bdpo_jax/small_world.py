"""The small world, stage by stage, each stage's output in one work directory
(a stage whose output is there is skipped, so a run resumes where it stopped):

  base/          the world's pipeline (tiny VAE fit to renders, CLIP text
                 encoder, DPM-Solver), its UNet pretrained by ``bdpo_jax.train``
                 on rendered images of the training prompts
  pairs/         two samples of the base per prompt, seeds apart, labelled by
                 the hidden human (Pick-a-Pic's schema), then preprocessed:
                 scores, votes, latents, text states
  runs/NAME/     one training run per variant (configs/train/world.py)
  models/NAME/   its export, a diffusers pipeline
  eval/          the evaluation command's images, scores, tables and grid (the demo's and
                 the replicate command's models side by side: each image made once)

Used by ``bdpo_jax.demo`` (BalancedDPO only) and ``bdpo_jax.replicate`` (every variant).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

if TYPE_CHECKING:
    from scorers_torch.evaluate import Results
    from scorers_torch.evaluation.stats import Tables

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    del message


def compile_cache(workdir: Path) -> None:
    """XLA's compiled steps kept in the work directory: a second run (or a second
    variant of the same shapes) does not compile again. A cache set already (the tests') is kept."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(workdir).absolute() / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def quiet_diffusers() -> None:
    """diffusers' and transformers' warnings, deprecation notices and loading
    bars off: the console tells the world's story."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="diffusers")


def _done(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "manifest.json").is_file()


def preprocess_into(source: Path, base: Path, output: Path, tie_policy: str = "drop") -> dict:
    """``scorers_torch.preprocess`` with the world's scorers; the cache's manifest."""
    import json

    from configs.preprocess import world as preprocess_world
    from scorers_torch import preprocess

    config = preprocess_world.get_config()
    config.source, config.base_model, config.output_dir = str(source), str(base), str(output)
    config.tie_policy = tie_policy
    return preprocess.run(config) or json.loads((output / "manifest.json").read_text())


def train_and_export(config: ml_collections.ConfigDict, run: Path, base: Path, out: Path) -> Path:
    """Trains (resuming) and exports to a pipeline; the export is made again
    where the run has a newer step than the one it holds. A finished run made
    with other settings (this world's config changed since) is an error, not reused."""
    import json

    from bdpo_jax.checkpoints import step_dirs
    from bdpo_jax.errors import UserError
    from bdpo_jax.export import export_is_current, export_pipeline
    from bdpo_jax.train import train
    from bdpo_jax.workdir import CONFIG_NAME, config_changes, describe_changes, resumable

    trained = max(step_dirs(run.absolute() / "checkpoints"), default=0)
    if trained and (run / CONFIG_NAME).is_file():
        # Not compared: the cache's path (it may be spelled otherwise; its content is this
        # workdir's) and keys the saved config lacks (added to the project since).
        changes = config_changes(json.loads((run / CONFIG_NAME).read_text()), config, saved_keys_only=True)
        altering = {k: v for k, v in changes.items() if not resumable(k, config) and k != "cache"}
        if altering:
            raise UserError(
                f"{run} was trained with other settings ({describe_changes(altering)}): the world's config changed "
                f"since. Remove {run} and {out} to train it again with the new ones, or use another --workdir"
            )
    if trained < config.train.steps:
        step = int(train(config, run).step)
        if step < config.train.steps:  # stopped by SIGTERM: a partial model is no stage's output
            raise UserError(f"{run}: training stopped at step {step} of {config.train.steps}; run again to resume")
    if not (_done(out) and export_is_current(run, out)):
        shutil.rmtree(out, ignore_errors=True)  # our own earlier export, of an older step
        export_pipeline(run, base, out)
    return out


def make_base(workdir: Path, world: ml_collections.ConfigDict, log: Log = print) -> Path:
    """The pretrained base pipeline, made once and reused."""
    from configs.train import world as train_world
    from scorers_torch import world as scene
    from scorers_torch.world_pipeline import make_world_pipeline, reconstruction_psnr

    base = workdir / "base"
    if _done(base):
        log(f"  base model: reusing {base}")
        return base
    skeleton = workdir / "pretrain" / "init"
    if not _done(skeleton):
        log(f"  fitting the tiny VAE to rendered images ({world.vae_steps} steps)")
        shutil.rmtree(skeleton, ignore_errors=True)
        tmp = skeleton.with_name("init.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        make_world_pipeline(tmp, world.unet.to_dict(), world.vae_steps, seed=world.seed, log=log)
        tmp.rename(skeleton)
        from diffusers import AutoencoderTiny

        psnr = reconstruction_psnr(AutoencoderTiny.from_pretrained(skeleton / "vae"))
        log(f"  VAE reconstruction of fresh renders: {psnr:.1f} dB PSNR")
    if world.pretrain_steps == 0:  # the suite's world: a random UNet is base enough to test the stages
        shutil.copytree(skeleton, base)
        return base
    renders = workdir / "pretrain" / "renders.parquet"
    prompts = scene.split_prompts(60)[0][: world.pretrain_prompts] * world.renders_per_prompt
    if not renders.is_file():
        rng = np.random.default_rng(world.seed)
        images = [scene.render(scene.parse_prompt(p), rng) for p in prompts]
        # Pick-a-Pic's schema holds pairs: image 0 is the render trained on, image 1 another one.
        others = [scene.render(scene.parse_prompt(p), rng) for p in prompts]
        scene.write_pairs(renders, prompts, images, others, np.ones(len(prompts)))
    log(f"  caching latents and text states of {len(prompts)} renders")
    preprocess_into(renders, skeleton, workdir / "pretrain" / "cache", tie_policy="human")
    config = train_world.get_config("pretrain")
    config.cache = str(workdir / "pretrain" / "cache")
    config.train.steps = world.pretrain_steps
    config.train.global_batch = min(config.train.global_batch, len(prompts))
    log(f"  pretraining the UNet on them with bdpo_jax.train ({world.pretrain_steps} steps)")
    return train_and_export(config, workdir / "pretrain" / "run", skeleton, base)


def sample(pipeline_dir: Path, prompts: Sequence[str], seeds: Sequence[int], world: ml_collections.ConfigDict):
    """One image per (prompt, seed) from a pipeline, as the evaluation samples (same noise rule)."""
    import torch

    from scorers_torch.evaluation.generate import describe_model, generate, load_pipeline

    info = describe_model("base", str(pipeline_dir))
    pipeline = load_pipeline(info, torch.device("cpu"), torch.float32)
    images = []
    for start in range(0, len(prompts), 64):
        chunk = slice(start, start + 64)
        images += generate(
            pipeline, info, prompts[chunk], seeds[chunk], world.guidance_scale, world.sampler_steps
        )  # fmt: skip
    return images


def make_pairs(workdir: Path, base: Path, world: ml_collections.ConfigDict, log: Log = print) -> Path:
    """Pick-a-Pic's way: two samples of the base for one prompt with different
    seeds, the hidden human's pick (a Bradley-Terry draw), then preprocessing."""
    from scorers_torch import world as scene
    from scorers_torch.scorers.world import read

    cache = workdir / "pairs" / "cache"
    source = workdir / "pairs" / "pairs.parquet"
    if not source.is_file():
        prompts = scene.split_prompts(60)[0][: world.pair_prompts] * world.pairs_per_prompt
        log(f"  sampling {len(prompts)} pairs from the base (two seeds per prompt)")
        rng = np.random.default_rng(world.seed + 1)
        seeds = rng.integers(0, 2**31 - 1, (2, len(prompts)))
        images_0 = sample(base, prompts, seeds[0].tolist(), world)
        images_1 = sample(base, prompts, seeds[1].tolist(), world)
        utility = [
            [scene.human_utility(read(im), p) for im, p in zip(ims, prompts, strict=True)]
            for ims in (images_0, images_1)
        ]
        scene.write_pairs(source, prompts, images_0, images_1, scene.human_prefers(*utility, rng))
    manifest = preprocess_into(source, base, cache)
    counts = manifest["counts"]
    log(
        f"  {counts['kept']} of {counts['pairs']} pairs kept (2-2 vote ties dropped); on those the vote agrees "
        f"with the hidden human on {counts['vote_agrees_with_human'] / max(counts['kept'], 1):.0%}"
    )
    return cache


def train_variant(workdir: Path, variant: str, base: Path, cache: Path, world: ml_collections.ConfigDict) -> Path:
    from configs.train import world as train_world

    config = train_world.get_config(variant)
    config.cache = str(cache)
    config.train.steps = world.train_steps
    config.train.global_batch = (
        min(config.train.global_batch, 8) if world.train_steps < 10 else config.train.global_batch
    )
    return train_and_export(config, workdir / "runs" / variant, base, workdir / "models" / variant)


def mean_of_n(results: Results) -> Tables:
    """The evaluation's comparisons on each prompt's mean score over its N images
    instead of the best: the typical image, where best-of-N rewards diversity."""
    from configs.evaluate import world as evaluate_world
    from scorers_torch.evaluate import read_scores
    from scorers_torch.evaluation import stats

    t, bootstrap = results.tables, evaluate_world.get_config().bootstrap
    columns = read_scores(results.scores)
    return stats.tabulate(
        columns, t.comparisons, t.prompt_sets, t.metrics, None,
        bootstrap.resamples, bootstrap.seed, bootstrap.confidence, statistic="mean",
    )  # fmt: skip


def forget_changed_models(output: Path, models: dict[str, Path], log: Log = print) -> None:
    """A model of the world's evaluation folder that is now another one (trained
    further, or again with other settings) is evaluated again, not reported from
    the old images: the folder is the world's own, so its old images go."""
    import json

    from bdpo_jax import storage
    from scorers_torch.evaluation.generate import describe_model
    from scorers_torch.evaluation.outputs import OutputDir

    out = OutputDir(output)
    if not storage.exists(out.manifest):
        return
    known = storage.read_json(out.manifest).get("models", {})
    for name, path in models.items():
        now = json.loads(json.dumps(describe_model(name, str(path)).describe()))
        if name in known and known[name] != now:
            log(f"  {name} changed since it was evaluated: its images are made again")
            out.forget_model(name)


def evaluate(output: Path, models: dict[str, Path], world: ml_collections.ConfigDict, comparisons: str | None = None):
    """The evaluation command (``scorers_torch.evaluate``) on held-out prompts, into ``output``."""
    from configs.evaluate import world as evaluate_world
    from scorers_torch import evaluate as evaluation

    config = evaluate_world.get_config()
    config.prompts.world.prompts = tuple(config.prompts.world.prompts[: world.eval_prompts])
    for name, path in models.items():
        config.models[name] = str(path)
    config.comparisons = comparisons
    config.images_per_prompt = world.images_per_prompt
    config.sampler.num_inference_steps = world.sampler_steps
    config.sampler.guidance_scale = world.guidance_scale
    config.output_dir = str(output)
    forget_changed_models(output, models)
    return evaluation.run(config)
