"""One draw of the small world, stage by stage, each stage's output in the draw's
folder (a stage whose output is there is skipped, so a run resumes where it stopped):

  base/            the world's pipeline (tiny VAE fit to renders of the training
                   prompts, CLIP text encoder, DPM-Solver), its UNet pretrained by
                   ``bdpo_jax.train`` on renders of the training prompts
  pairs/           two samples of the base per training prompt, seeds apart, labelled
                   by the hidden human (Pick-a-Pic's schema), then preprocessed:
                   scores, votes, latents, text states
  runs/NAME/       one training run per variant (``world.settings.VARIANTS``)
  models/NAME/     its export, a diffusers pipeline
  eval-test/       the evaluation command's images, scores, tables and grid on the
                   test prompts (eval-validation/: on the validation prompts); every
                   model of the draw side by side, each image made once

Everything in a draw follows from ``world.seed``. A stage made with other settings
than the world's now is an error naming the folder to remove, not silently reused.
Used by ``world.demo`` (BalancedDPO), ``world.replicate`` (every variant, many
draws) and ``world.select`` (settings on validation prompts).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from bdpo_jax.errors import UserError
from scorers_torch.pickapic import write_pairs
from world import scene, settings

if TYPE_CHECKING:
    from scorers_torch.evaluate import Results
    from scorers_torch.evaluation.stats import Tables

Log = Callable[[str], None]
STAGE_RECORD = "world_stage.json"  # the world settings a stage was made with
TIMINGS = "timings.json"  # in a draw's folder: seconds each stage took when it was made


def draw_dir(workdir: str | Path, seed: int) -> Path:
    """Where draw ``seed`` of a world lives under a work directory."""
    return Path(workdir) / f"draw-{seed}"


@contextlib.contextmanager
def timed(draw: Path, stage: str) -> Iterator[None]:
    """Records how long ``stage`` took the first time it ran to its end (a stage reused later keeps it):
    the draw's profile, ``draw/timings.json``."""
    start = time.perf_counter()
    yield
    path = draw / TIMINGS
    found = json.loads(path.read_text()) if path.is_file() else {}
    if stage not in found:
        path.write_text(json.dumps(found | {stage: round(time.perf_counter() - start, 1)}, indent=1))


def compile_cache(workdir: Path) -> None:
    """XLA's compiled steps kept in the work directory: a second run (or a second
    variant, or draw, of the same shapes) does not compile again. A cache set already (the tests') is kept."""
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


def _stage_settings(world: ml_collections.ConfigDict, *keys: str) -> dict:
    return {"seed": world.seed, **{k: world[k].to_dict() for k in keys}}


def check_stage(path: Path, made_with: dict) -> None:
    """A stage's output made with other world settings is refused, naming the settings and the fix."""
    from bdpo_jax import records

    record = path / STAGE_RECORD
    if not record.is_file():
        return
    if changed := records.changes(json.loads(record.read_text()), made_with, absent=records.ABSENT):
        raise UserError(
            f"{path} was made with other world settings ({records.describe(changed)}). Remove {path.parent} "
            f"to make this draw again with the new ones, or use another --workdir"
        )


def _record_stage(path: Path, made_with: dict) -> None:
    (path / STAGE_RECORD).write_text(json.dumps(made_with, indent=2))


def preprocess_into(source: Path, base: Path, output: Path, tie_policy: str = "drop") -> dict:
    """``scorers_torch.preprocess`` with the world's scorers; the cache's manifest."""
    from scorers_torch import preprocess

    config = settings.preprocess_config(str(source), str(base), str(output), tie_policy)
    return preprocess.run(config) or json.loads((output / "manifest.json").read_text())


def train_and_export(config: ml_collections.ConfigDict, run: Path, base: Path, out: Path) -> Path:
    """Trains (resuming) and exports to a pipeline; the export is made again
    where the run has a newer step than the one it holds. A finished run made
    with other settings (this world's config changed since) is an error, not reused."""
    from bdpo_jax.checkpoints import step_dirs
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


def make_base(draw: Path, world: ml_collections.ConfigDict, log: Log = print) -> Path:
    """The draw's pretrained base pipeline, made once and reused. Only training prompts reach it."""
    from world.pipeline import make_world_pipeline, reconstruction_psnr

    base, made_with = draw / "base", _stage_settings(world, "vae", "unet", "pretrain")
    skeleton = draw / "pretrain" / "init"
    check_stage(base, made_with)
    check_stage(skeleton, made_with)
    if _done(base):
        log(f"  base model: reusing {base}")
        return base
    train_prompts = settings.prompts(world, "train", world.pretrain.prompts)
    if not _done(skeleton):
        log(f"  fitting the tiny VAE to renders of {len(train_prompts)} training prompts ({world.vae.steps} steps)")
        shutil.rmtree(skeleton, ignore_errors=True)
        tmp = skeleton.with_name("init.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with timed(draw, "vae"):
            make_world_pipeline(tmp, world.unet.to_dict(), train_prompts, world.vae.steps, world.seed, log=log)
        _record_stage(tmp, made_with)
        tmp.rename(skeleton)
        from diffusers import AutoencoderTiny

        psnr = reconstruction_psnr(AutoencoderTiny.from_pretrained(skeleton / "vae"), train_prompts)
        log(f"  VAE reconstruction of fresh renders: {psnr:.1f} dB PSNR")
    renders = draw / "pretrain" / "renders.parquet"
    captions = train_prompts * world.pretrain.renders_per_prompt
    if not renders.is_file():
        rng = np.random.default_rng([world.seed, 1])
        images = [scene.render(scene.parse_prompt(p), rng) for p in captions]
        # Pick-a-Pic's schema holds pairs: image 0 is the render trained on, image 1 another one.
        others = [scene.render(scene.parse_prompt(p), rng) for p in captions]
        write_pairs(renders, captions, images, others, np.ones(len(captions)))
    log(f"  caching latents and text states of {len(captions)} renders")
    preprocess_into(renders, skeleton, draw / "pretrain" / "cache", tie_policy="human")
    config = settings.pretrain_config(world)
    config.cache = str(draw / "pretrain" / "cache")
    log(f"  pretraining the UNet on them with bdpo_jax.train ({world.pretrain.steps} steps)")
    with timed(draw, "pretraining"):
        train_and_export(config, draw / "pretrain" / "run", skeleton, base)
    _record_stage(base, made_with)
    return base


def sample(pipeline_dir: Path, prompts: Sequence[str], seeds: Sequence[int], world: ml_collections.ConfigDict):
    """One image per (prompt, seed) from a pipeline, as the evaluation samples (same noise rule)."""
    import torch

    from scorers_torch.evaluation.generate import describe_model, generate, load_pipeline
    from scorers_torch.threads import torch_threads

    info = describe_model("base", str(pipeline_dir))
    pipeline = load_pipeline(info, torch.device("cpu"), torch.float32)
    images = []
    with torch_threads(world.cpu_threads):
        for start in range(0, len(prompts), 64):
            chunk = slice(start, start + 64)
            images += generate(
                pipeline, info, prompts[chunk], seeds[chunk], world.sampler.guidance_scale, world.sampler.steps
            )  # fmt: skip
    return images


def make_pairs(draw: Path, base: Path, world: ml_collections.ConfigDict, log: Log = print) -> Path:
    """Pick-a-Pic's way: two samples of the base for one training prompt with
    different seeds, the hidden human's pick (a Bradley-Terry draw), then preprocessing."""
    from world.scorers import read

    folder, made_with = draw / "pairs", _stage_settings(world, "vae", "unet", "pretrain", "pairs", "sampler")
    cache, source = folder / "cache", folder / "pairs.parquet"
    check_stage(folder, made_with)
    if not source.is_file():
        prompts = settings.prompts(world, "train", world.pairs.prompts) * world.pairs.per_prompt
        log(f"  sampling {len(prompts)} pairs from the base (two seeds per training prompt)")
        rng = np.random.default_rng([world.seed, 2])
        seeds = rng.integers(0, 2**31 - 1, (2, len(prompts)))
        images_0 = sample(base, prompts, seeds[0].tolist(), world)
        images_1 = sample(base, prompts, seeds[1].tolist(), world)
        utility = [
            [scene.human_utility(read(im), p) for im, p in zip(ims, prompts, strict=True)]
            for ims in (images_0, images_1)
        ]
        folder.mkdir(parents=True, exist_ok=True)
        _record_stage(folder, made_with)
        write_pairs(source, prompts, images_0, images_1, scene.human_prefers(*utility, rng))
    manifest = preprocess_into(source, base, cache)
    counts = manifest["counts"]
    log(
        f"  {counts['kept']} of {counts['pairs']} pairs kept (2-2 vote ties dropped); on those the vote agrees "
        f"with the hidden human on {counts['vote_agrees_with_human'] / max(counts['kept'], 1):.0%}"
    )
    return cache


def train_variant(
    draw: Path, variant: str, base: Path, cache: Path, world: ml_collections.ConfigDict, folder: str | None = None
) -> Path:
    """A variant trained on the draw's pairs (in ``runs/FOLDER``, default its name) and exported (``models/FOLDER``)."""
    config = settings.train_config(world, variant)
    config.cache = str(cache)
    return train_and_export(config, draw / "runs" / (folder or variant), base, draw / "models" / (folder or variant))


def mean_of_n(results: Results, world: ml_collections.ConfigDict) -> Tables:
    """The evaluation's comparisons on each prompt's mean score over its N images
    instead of the best: the typical image, where best-of-N rewards diversity."""
    from scorers_torch.evaluate import read_scores
    from scorers_torch.evaluation import stats

    t, bootstrap = results.tables, settings.evaluate_config(world).bootstrap
    columns = read_scores(results.scores)
    return stats.tabulate(
        columns, t.comparisons, t.prompt_sets, t.metrics, None,
        bootstrap.resamples, bootstrap.seed, bootstrap.confidence, statistic="mean",
    )  # fmt: skip


def forget_changed_models(output: Path, models: dict[str, Path], log: Log = print) -> None:
    """A model of the world's evaluation folder that is now another one (trained
    further, or again with other settings) is evaluated again, not reported from
    the old images: the folder is the world's own, so its old images go."""
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


def evaluation_dir(draw: Path, world: ml_collections.ConfigDict) -> Path:
    return draw / f"eval-{world.evaluation.prompt_set}"


def evaluate(draw: Path, models: dict[str, Path], world: ml_collections.ConfigDict, comparisons: str | None = None):
    """The evaluation command (``scorers_torch.evaluate``) on the world's validation or test prompts."""
    from scorers_torch import evaluate as evaluation

    config = settings.evaluate_config(world)
    for name, path in models.items():
        config.models[name] = str(path)
    config.comparisons = comparisons
    config.output_dir = str(evaluation_dir(draw, world))
    forget_changed_models(evaluation_dir(draw, world), models)
    return evaluation.run(config)
