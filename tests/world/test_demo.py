"""The README's main command on the suite's world (configs/world.py:test): base,
pairs sampled from it, BalancedDPO, evaluation against the base; run again,
every stage is reused."""

import json

import pyarrow.parquet as pq
import pytest

from bdpo_jax.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("world")
    return workdir, run_demo(workdir, size="test")


def test_pairs_are_two_seeds_of_the_base_per_prompt(demo):
    workdir, _ = demo
    pairs = pq.read_table(workdir / "pairs" / "pairs.parquet").to_pydict()
    assert len(pairs["caption"]) == 8 * 2  # configs/world.py:test: 8 prompts, 2 pairs each
    assert all(
        a != b for a, b in zip(pairs["jpg_0"], pairs["jpg_1"], strict=True)
    )  # different seeds, different samples
    assert set(pairs["label_0"]) <= {0.0, 1.0}
    manifest = json.loads((workdir / "pairs" / "cache" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["scorers"]] == ["composition", "contrast", "fidelity", "vividness"]


def test_balanced_dpo_trains_exports_and_is_evaluated_against_the_base(demo):
    workdir, outcome = demo
    results = outcome["results"]
    assert (workdir / "models" / "balanced" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert results.tables.comparisons == (("balanced", "base"),)
    assert set(results.tables.metrics) == {"composition", "contrast", "fidelity", "vividness", "world_human"}
    assert all(0 <= w.low <= w.win_rate <= w.high <= 100 for w in results.tables.win_rates)
    assert "balanced vs base" in results.text and outcome["grid"].endswith(".png")
    assert json.loads((workdir / "demo_result.json").read_text())["grid"] == outcome["grid"]
    typical = outcome["typical"]  # the same comparisons on each prompt's mean image score
    assert typical.statistic == "mean" and typical.comparisons == results.tables.comparisons


def test_the_base_tells_prompts_apart_and_the_pairs_cache_matches_its_source(demo):
    """A changed word moves the text states by ~1 std (CLIP's own initialisation:
    0.27, and a base that ignored its prompts); the cached text states and latents
    are what the base's encoders make of each row's caption and images."""
    from scorers_torch import world, world_diagnosis

    workdir, _ = demo
    assert world_diagnosis.text_separation(workdir / "base", world.split_prompts(60)[1][:4]) > 0.5
    found = world_diagnosis.cache_alignment(
        workdir / "pairs" / "cache", workdir / "base", workdir / "pairs" / "pairs.parquet"
    )
    assert found == {"text_states": 0.0, "latents_0": 0.0, "latents_1": 0.0}


def test_run_again_reuses_every_stage(demo):
    workdir, outcome = demo
    stamps = {p: p.stat().st_mtime_ns for p in (workdir / "base" / "unet").iterdir()}
    again = run_demo(workdir, size="test")
    assert again["win_rates"] == outcome["win_rates"]
    assert {p: p.stat().st_mtime_ns for p in (workdir / "base" / "unet").iterdir()} == stamps


def test_a_newer_trained_step_is_exported_again(demo):
    """Asked for one step more, the run resumes, the export is made again, of the
    new step, and so is the export's evaluation."""
    from bdpo_jax import small_world
    from configs import world as world_config

    workdir, _ = demo
    world = world_config.get_config("test")
    export = workdir / "models" / "balanced" / "bdpo_export.json"
    before = json.loads(export.read_text())["step"]
    assert before == world.train_steps
    world.train_steps += 1
    small_world.train_variant(workdir, "balanced", workdir / "base", workdir / "pairs" / "cache", world)
    assert json.loads(export.read_text())["step"] == before + 1
    # and its evaluation is made again (not the older step's images), the base's kept
    images = {m: workdir / "eval" / "images" / "world" / m for m in ("base", "balanced")}
    stamps = {m: {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} for m, folder in images.items()}
    models = {"base": workdir / "base", "balanced": workdir / "models" / "balanced"}
    small_world.evaluate(workdir / "eval", models, world)
    again = {m: {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} for m, folder in images.items()}
    assert again["base"] == stamps["base"]
    assert again["balanced"].keys() == stamps["balanced"].keys()
    assert all(again["balanced"][name] != stamp for name, stamp in stamps["balanced"].items())
    manifest = json.loads((workdir / "eval" / "manifest.json").read_text())
    assert manifest["models"]["balanced"]["export"]["step"] == before + 1


def test_a_finished_run_with_other_settings_is_refused(demo, monkeypatch):
    """A world whose config changed since (here beta) names the run and the fix, and trains nothing."""
    from bdpo_jax import small_world
    from bdpo_jax.errors import UserError
    from configs import world as world_config
    from configs.train import world as train_world

    workdir, _ = demo
    real = train_world.get_config

    def changed(variant):
        config = real(variant)
        config.train.beta = 123.0
        return config

    monkeypatch.setattr(train_world, "get_config", changed)
    stamps = {p: p.stat().st_mtime_ns for p in (workdir / "runs" / "balanced").rglob("*")}
    with pytest.raises(UserError, match=r"train.beta: 5000.0 -> 123.0.*Remove .*runs/balanced"):
        small_world.train_variant(workdir, "balanced", workdir / "base", workdir / "pairs" / "cache",
                                  world_config.get_config("test"))  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in (workdir / "runs" / "balanced").rglob("*")} == stamps
