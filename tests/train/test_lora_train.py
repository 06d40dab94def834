"""LoRA training: the state holds adapters only, the base stays frozen and out
of the state, the reference refresh copies the adapters, T = 0 keeps the base
as the reference, and a resumed run is bit-exact."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from train_fixtures import tiny_train_config

from bdpo_jax import train as train_module
from bdpo_jax.trainer import build_trainer
from bdpo_jax.workdir import base_fingerprint


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def lora_config(tiny_cache, **train_overrides):
    config = tiny_train_config(tiny_cache, **train_overrides)
    config.lora.rank = 2
    config.lora.alpha = 4.0
    config.optimizer.learning_rate = 1e-2  # adapters start at zero effect: a visible step needs a large rate
    return config


def run(config, steps):
    trainer = build_trainer(config, jax.devices()[:1])
    base_before = jax.device_get(trainer.base)
    initial = jax.device_get(trainer.state)
    state, history = trainer.state, []
    for step in range(steps):
        state, metrics = trainer.step_fn(state, trainer.global_batch(step))
        history.append((jax.device_get(state), jax.device_get(metrics)))
    return trainer, base_before, initial, history


@pytest.fixture(scope="module")
def refreshed(tiny_cache):
    config = lora_config(tiny_cache, steps=3, ref_refresh_every=2)
    config.checkpoint.every = 2
    config.checkpoint.async_save = False
    return config, run(config, 3)


def test_state_holds_adapters_and_their_optimizer_state_only(refreshed):
    _, (trainer, base_before, initial, _) = refreshed
    adapter_paths = list(traverse_util.flatten_dict(initial.params))
    assert adapter_paths and all(path[-2] in ("lora_A", "lora_B") for path in adapter_paths)
    assert {path[-3] for path in adapter_paths} == {"to_q", "to_k", "to_v", 0}  # to_out.0
    adapter_size = sum(x.size for x in leaves(initial.params))
    base_size = sum(x.size for x in leaves(base_before))
    assert trainer.parameter_count == adapter_size < base_size / 10
    # AdamW: two moments per adapter parameter, plus step counts; nothing of the base's size
    assert sum(x.size for x in leaves(initial.opt_state)) < 2 * adapter_size + 10
    # lora_B zero: policy and reference start as the base, which the reference stays at T = 0
    lora_b = [b for path, b in traverse_util.flatten_dict(initial.ref_params).items() if "lora_B" in path]
    assert lora_b and all(np.abs(b).max() == 0 for b in lora_b)


def test_reference_refresh_copies_the_adapters_and_the_base_stays(refreshed):
    _, (trainer, base_before, initial, history) = refreshed
    (s1, m1), (s2, m2), (s3, m3) = history
    assert abs(float(m1["loss"]) - math.log(2)) < 1e-6  # step 0: policy = reference = base, margin exactly 0
    assert float(m1["reward_margin"]) == 0.0
    assert same(s1.ref_params, initial.ref_params)
    assert not same(s2.params, s1.params)  # (step 0's learning rate is 0: warmup starts there)
    assert same(s2.ref_params, jax.tree.map(lambda p: p.astype(trainer.plan.step_config.ref_dtype), s2.params))
    assert same(s3.ref_params, s2.ref_params) and not same(s3.params, s2.params)
    assert [bool(m["ref_refreshed"]) for m in (m1, m2, m3)] == [False, True, False]
    assert same(jax.device_get(trainer.base), base_before)  # frozen, and not donated by the steps


def test_bad_lora_settings_are_named(tiny_cache):
    from bdpo_jax.trainer import ConfigError, check

    config = lora_config(tiny_cache)
    config.lora.targets = ("to_qq", "resnet")
    config.lora.base_dtype = "float8"
    with pytest.raises(ConfigError) as error:
        check(config, jax.devices()[:1])
    assert "'to_qq'" in str(error.value) and "lora.base_dtype 'float8'" in str(error.value)


@pytest.fixture(scope="module")
def resumed(refreshed, tmp_path_factory):
    """The train loop on the fixture's trainer (no new compile): it crashes
    before step 3, and the run again resumes from the checkpoint of step 2."""
    config, (trainer, _, initial, _) = refreshed
    workdir = tmp_path_factory.mktemp("lora-run")
    step_fn = trainer.step_fn

    def crash_at_2(state, batch):
        if int(state.step) == 2:
            raise RuntimeError("simulated crash")
        return step_fn(state, batch)

    trainer.state, trainer.step_fn = jax.device_put(initial, trainer.state_shardings), crash_at_2
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_module.train(config, workdir, trainer)
    trainer.state, trainer.step_fn = jax.device_put(initial, trainer.state_shardings), step_fn
    return workdir, train_module.train(config, workdir, trainer)


def test_crash_then_resume_is_bit_exact(refreshed, resumed):
    _, (_, _, _, history) = refreshed
    workdir, state = resumed
    assert int(state.step) == 3
    expected = history[-1][0]
    assert same(state.params, expected.params) and same(state.ref_params, expected.ref_params)
    assert same(state.opt_state, expected.opt_state)
    record = json.loads((workdir / "base_model.json").read_text())  # the base: named and fingerprinted, not copied
    assert record["fingerprint"] == base_fingerprint(Path(record["unet"]))
    assert not any(p.name.endswith(".safetensors") for p in (workdir / "checkpoints").rglob("*"))


def test_export_adapters_for_diffusers_and_merged(refreshed, resumed, tmp_path):
    """diffusers' load_lora_weights on the base pipeline changes its UNet's output
    by what our adapters change ours by; the merged export computes the same."""
    from diffusers import DiffusionPipeline
    from flax import nnx
    from safetensors import safe_open

    from bdpo_jax.export import export_lora, export_pipeline
    from bdpo_jax.models import ModelOptions, abstract_unet
    from bench.parity import random_inputs, torch_forward

    _, (trainer, base_params, _, _) = refreshed
    workdir, state = resumed
    base = Path(trainer.plan.unet_dir).parent
    unet_config, lora = trainer.plan.unet_config, trainer.plan.lora
    inputs = random_inputs(unet_config)
    adapted_graphdef, _ = abstract_unet(unet_config, ModelOptions(), lora)
    plain_graphdef, _ = abstract_unet(unet_config)
    forward = lambda graphdef, *states: np.asarray(nnx.merge(graphdef, *states)(**inputs))  # noqa: E731
    ours_before = forward(plain_graphdef, base_params)
    ours_after = forward(adapted_graphdef, jax.device_get(state.params), base_params)

    pipeline = DiffusionPipeline.from_pretrained(base)
    theirs_before = torch_forward(pipeline.unet, inputs)
    np.testing.assert_allclose(theirs_before, ours_before, atol=1e-5 * np.abs(ours_before).max())
    lora_file = export_lora(workdir, tmp_path / "lora")
    with safe_open(lora_file, framework="numpy") as f:
        provenance = json.loads(f.metadata()["bdpo"])
    assert provenance["base"] == json.loads((workdir / "base_model.json").read_text()) and provenance["rank"] == 2
    pipeline.load_lora_weights(lora_file.parent)
    theirs_after = torch_forward(pipeline.unet, inputs)
    effect = ours_after - ours_before
    tolerance = 1e-5 * np.abs(ours_after).max()
    assert np.abs(effect).max() > 100 * tolerance  # the adapters matter
    np.testing.assert_allclose(theirs_after - theirs_before, effect, atol=tolerance)

    merged = DiffusionPipeline.from_pretrained(export_pipeline(workdir, base, tmp_path / "merged"))
    np.testing.assert_allclose(torch_forward(merged.unet, inputs), ours_after, atol=tolerance)


@pytest.mark.parametrize("model", ["sd15", "sd21", "sdxl"])
def test_lora_config_resolves(model):
    from bdpo_jax.models.lora import ATTENTION
    from bdpo_jax.trainer import config_value_problems, lora_spec
    from configs.train import lora

    config = lora.get_config(model)
    config.cache = "/cache"
    assert config_value_problems(config) == []
    spec = lora_spec(config)
    assert (spec.rank, spec.scale, spec.targets) == (8, 1.0, ATTENTION)
    assert config.lora.base_dtype == config.model.dtype == "bfloat16"
