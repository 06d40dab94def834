"""The small world's commands on the suite's world (world/configs/world.py:test), in one file so that
one test process makes its draws: the demo (base with VAE fit and pretraining, pairs sampled from it,
BalancedDPO, evaluation against the base on test prompts; run again, every stage is reused; only
training prompts reach the base and the pairs; the base is a function of the world's seed), then the
replicate over two draws (the demo's, seed 0, and seed 1): tables as means over draws, the same numbers
again from the stored scores."""

import hashlib
import json

import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest

from bdpo_jax.workdir import EXPORT_RECORD_NAME
from world import replicate, scene, settings, stages
from world.configs.world import get_config
from world.demo import run_demo


def test_pairs_are_two_seeds_of_the_base_per_training_prompt(world_run):
    workdir, _, _ = world_run
    pairs = pq.read_table(workdir / "draw-0" / "pairs" / "pairs.parquet").to_pydict()
    world = get_config("test")
    assert len(pairs["caption"]) == world.pairs.prompts * world.pairs.per_prompt
    assert all(a != b for a, b in zip(pairs["jpg_0"], pairs["jpg_1"], strict=True))  # different seeds
    assert set(pairs["label_0"]) <= {0.0, 1.0}
    manifest = json.loads((workdir / "draw-0" / "pairs" / "cache" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["scorers"]] == list(settings.WORLD_SCORERS)


def test_only_training_prompts_reach_the_vae_the_pretraining_and_the_pairs(world_run):
    """Every render made while the demo ran (the VAE's fit, its PSNR, the pretraining images) and every
    caption of the pretraining and pair caches is a training prompt; the evaluation's are test prompts."""
    workdir, _, rendered = world_run
    split = {part: set(prompts) for part, prompts in scene.split_prompts().items()}
    assert rendered and set(rendered) <= split["train"]
    for source in ("pretrain/renders.parquet", "pairs/pairs.parquet"):
        assert set(pq.read_table(workdir / "draw-0" / source).column("caption").to_pylist()) <= split["train"]
    evaluated = pq.read_table(workdir / "draw-0" / "eval-test" / "scores.parquet").column("prompt").to_pylist()
    assert set(evaluated) <= split["test"]
    assert not (split["train"] & split["validation"]) and not (split["train"] | split["validation"]) & split["test"]


def test_balanced_dpo_trains_exports_and_is_evaluated_against_the_base(world_run):
    workdir, outcome, _ = world_run
    results = outcome["results"]
    assert (workdir / "draw-0" / "models" / "balanced" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert results.tables.comparisons == (("balanced", "base"),)
    assert set(results.tables.metrics) == {*settings.WORLD_SCORERS, settings.HIDDEN_HUMAN}
    assert all(0 <= w.low <= w.win_rate <= w.high <= 1 for w in results.tables.win_rates)
    assert "balanced vs base" in results.text and outcome["grid"].endswith(".png")
    assert json.loads((workdir / "draw-0" / "demo_result.json").read_text())["grid"] == outcome["grid"]
    typical = outcome["typical"]  # the same comparisons on each prompt's mean image score
    assert typical.statistic == "mean" and typical.comparisons == results.tables.comparisons


def test_the_base_tells_prompts_apart_and_the_pairs_cache_matches_its_source(world_run):
    """A changed word moves the text states by ~1 std (CLIP's own initialisation:
    0.27, and a base that ignored its prompts); the cached text states and latents
    are what the base's encoders make of each row's caption and images."""
    from world import diagnosis

    workdir, _, _ = world_run
    draw = workdir / "draw-0"
    prompts = settings.prompts(get_config("test"), "validation", 4)
    assert diagnosis.text_separation(draw / "base", prompts) > 0.5
    found = diagnosis.cache_alignment(draw / "pairs" / "cache", draw / "base", draw / "pairs" / "pairs.parquet")
    assert found == {"text_states": 0.0, "latents_0": 0.0, "latents_1": 0.0}


def _digest(folder) -> dict[str, str]:
    """Every file's hash but the records of where it was made (the export's run path, the stage's settings)."""
    records = {stages.STAGE_RECORD, EXPORT_RECORD_NAME}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in records}  # fmt: skip


def test_the_base_is_a_function_of_the_seed(world_run, tmp_path):
    """Made again elsewhere, the base is the same to the byte: tokenizer ids, text encoder, VAE, UNet."""
    workdir, _, _ = world_run
    again = stages.make_base(tmp_path / "draw-0", get_config("test"), log=lambda message: None)
    assert _digest(again) == _digest(workdir / "draw-0" / "base")


def test_run_again_reuses_every_stage(world_run):
    workdir, outcome, _ = world_run
    stamps = {p: p.stat().st_mtime_ns for p in (workdir / "draw-0" / "base" / "unet").iterdir()}
    again = run_demo(workdir, get_config("test"))
    assert again["win_rates"] == outcome["win_rates"]
    assert {p: p.stat().st_mtime_ns for p in (workdir / "draw-0" / "base" / "unet").iterdir()} == stamps


def _changed(world: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
    changed = ml_collections.ConfigDict(world.to_dict())
    for key, value in values.items():
        section, name = key.split("__")
        changed[section][name] = value
    return changed


def test_a_newer_trained_step_is_exported_and_evaluated_again(world_run):
    """Asked for one step more, the run resumes, the export is made again, of the
    new step, and so is the export's evaluation (the base's images are kept)."""
    workdir, _, _ = world_run
    draw, world = workdir / "draw-0", get_config("test")
    export = draw / "models" / "balanced" / "bdpo_export.json"
    before = json.loads(export.read_text())["step"]
    assert before == world.dpo.steps
    longer = _changed(world, dpo__steps=world.dpo.steps + 1)
    stages.train_variant(draw, "balanced", draw / "base", draw / "pairs" / "cache", longer)
    assert json.loads(export.read_text())["step"] == before + 1
    images = {m: draw / "eval-test" / "images" / "world" / m for m in ("base", "balanced")}
    stamps = {m: {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} for m, folder in images.items()}
    stages.evaluate(draw, {"base": draw / "base", "balanced": draw / "models" / "balanced"}, longer)
    again = {m: {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} for m, folder in images.items()}
    assert again["base"] == stamps["base"]
    assert again["balanced"].keys() == stamps["balanced"].keys()
    assert all(again["balanced"][name] != stamp for name, stamp in stamps["balanced"].items())
    manifest = json.loads((draw / "eval-test" / "manifest.json").read_text())
    assert manifest["models"]["balanced"]["export"]["step"] == before + 1


def test_stages_made_with_other_settings_are_refused(world_run):
    """A world whose config changed since names the stage and the fix, and makes nothing: a run
    (here beta), the pairs (sampler steps) and the base (VAE steps)."""
    from bdpo_jax.errors import UserError

    workdir, _, _ = world_run
    draw, world = workdir / "draw-0", get_config("test")
    stamps = {p: p.stat().st_mtime_ns for p in draw.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"train.beta: 5000.0 -> 123.0.*Remove .*runs/balanced"):
        changed = _changed(world, dpo__beta=123.0)
        stages.train_variant(draw, "balanced", draw / "base", draw / "pairs" / "cache", changed)
    with pytest.raises(UserError, match=r"sampler.steps: 2 -> 3.*Remove .*draw-0"):
        stages.make_pairs(draw, draw / "base", _changed(world, sampler__steps=3))
    with pytest.raises(UserError, match=r"vae.steps: 4 -> 5.*Remove .*draw-0"):
        stages.make_base(draw, _changed(world, vae__steps=5))
    assert {p: p.stat().st_mtime_ns for p in draw.rglob("*") if p.is_file()} == stamps


def test_the_world_config_is_checked_before_anything_runs(tmp_path):
    world = _changed(get_config("test"), dpo__global_batch=0, evaluation__prompt_set="train")
    world.variants = ("balanced", "nonsense")
    with pytest.raises(settings.WorldConfigError) as error:
        run_demo(tmp_path, world)
    message = str(error.value)
    for part in ("dpo.global_batch 0", "evaluation.prompt_set 'train'", "variants ['nonsense']"):
        assert part in message
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def replicated(world_run):
    workdir, _, _ = world_run
    world = get_config("test").unlock()
    world.draws, world.variants = 2, ("balanced", "dpo")
    world.lock()
    summary, text = replicate.run_replicate(workdir, world)
    return workdir, world, summary, text


def test_tables_are_means_over_draws_with_intervals(replicated):
    from scorers_torch.evaluate import read_scores
    from scorers_torch.evaluation import stats

    workdir, _, summary, text = replicated
    assert summary.seeds == [0, 1] and summary.prompt_set == "test"
    for title in ("Table I", "balanced vs base", "dpo vs base", "balanced vs dpo", "Worst metric", "paired by draw"):
        assert title in text
    rows = {(w["a"], w["b"], w["metric"]): w for w in summary.tables["best"]["win_rates"]}
    for (a, b, metric), row in rows.items():
        assert row["low"] <= row["win_rate"] <= row["high"]
        if b == "base":
            assert row["win_rate"] == pytest.approx(np.mean(summary.per_draw["best"][a][metric]))
    # each draw's rate is that draw's own evaluation's
    for k, seed in enumerate(summary.seeds):
        scores = read_scores(stages.draw_dir(workdir, seed) / "eval-test" / "scores.parquet")
        tables = stats.tabulate(scores, [("dpo", "base")], ["world"], ["fidelity"], resamples=10)
        assert summary.per_draw["best"]["dpo"]["fidelity"][k] == pytest.approx(tables.win_rates[0].win_rate)
    worst = summary.worst["best"]["balanced"]
    assert worst["mean"] == pytest.approx(np.mean(worst["per_draw"]))
    difference = summary.differences["mean"]["dpo"]
    mine, theirs = summary.worst["mean"]["balanced"]["per_draw"], summary.worst["mean"]["dpo"]["per_draw"]
    assert difference["per_draw"] == pytest.approx(np.subtract(mine, theirs).tolist())
    assert (workdir / "replicate_draws.png").stat().st_size > 0 and (workdir / "replicate_grid.png").stat().st_size > 0


def test_each_draw_is_its_own_world(replicated):
    workdir, _, _, _ = replicated
    unet = "base/unet/diffusion_pytorch_model.safetensors"
    digests = {hashlib.sha256((stages.draw_dir(workdir, s) / unet).read_bytes()).hexdigest() for s in (0, 1)}
    assert len(digests) == 2


def test_the_summary_comes_again_from_the_stored_scores(replicated):
    workdir, world, summary, text = replicated
    again, again_text = replicate.summarise(workdir, world, summary.seconds)
    assert again == summary and again_text == text


def test_the_demo_places_its_draw_among_the_replicates_draws(replicated):
    """The demo's line: its worst metric against the recorded replicate's range, and, where the replicate
    has its seed, whether that draw gave the same; a replicate of other settings is not compared."""
    from scorers_torch.evaluate import read_scores
    from scorers_torch.evaluation import stats
    from world.demo import placement

    workdir, _, summary, _ = replicated
    scores = read_scores(workdir / "draw-0" / "eval-test" / "scores.parquet")
    metrics = [*settings.WORLD_SCORERS, settings.HIDDEN_HUMAN]
    tables = stats.tabulate(scores, [("balanced", "base")], ["world"], metrics, resamples=10)
    recorded = workdir / replicate.RESULT_NAME
    line = placement(get_config("test"), tables, recorded)
    worst = summary.worst["best"]["balanced"]
    assert f"the replicate's 2 draws {100 * min(worst['per_draw']):.1f} to" in line
    assert line.endswith(f"the replicate's draw of seed 0 gave {100 * worst['per_draw'][0]:.1f}% (the same)"), line
    assert "other settings: dpo" in placement(_changed(get_config("test"), dpo__beta=1.0), tables, recorded)
