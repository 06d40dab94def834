"""Check, then load: every config problem is reported before any weight is
read; each weight goes straight to its shards."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import tiny_train_config

from bdpo_jax import cache as cache_format
from bdpo_jax import sharding
from bdpo_jax.models import load_unet
from bdpo_jax.trainer import ConfigError, build_trainer, check


@pytest.fixture
def base_with_unreadable_weights(tiny_cache, tmp_path):
    """The cache's base pipeline, its UNet weights file replaced by garbage."""
    base = cache_format.read_manifest(tiny_cache)["base_model"]["path"]
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    (copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    return copy


def test_every_config_problem_is_reported_before_weights_are_read(tiny_cache, base_with_unreadable_weights):
    config = tiny_train_config(tiny_cache, objective="ppo", grad_accum=3, label_source="weighted_sum")
    config.base_model = str(base_with_unreadable_weights)
    config.train.label_weights = (1.0, 2.0)
    config.optimizer.name = "sgd"
    config.optimizer.decay = "linear"
    config.mesh.data = 3
    with pytest.raises(ConfigError) as error:
        build_trainer(config)
    message = str(error.value)
    for expected in (
        "train.objective 'ppo'",
        "optimizer.name 'sgd'",
        "optimizer.decay 'linear'",
        "label_weights has 2 weights; the cache has 3 scorers",
        "mesh data x fsdp must cover the 4 devices",
    ):
        assert expected in message, message


def test_cosine_decay_peaks_after_the_warmup_and_ends_at_zero():
    from bdpo_jax.optim import learning_rate_schedule

    cosine = learning_rate_schedule(1e-3, 10, "cosine", 110)
    assert float(cosine(5)) == pytest.approx(5e-4) and float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(60)) == pytest.approx(5e-4) and float(cosine(110)) == pytest.approx(0.0, abs=1e-12)
    assert float(learning_rate_schedule(1e-3, 10)(110)) == pytest.approx(1e-3)  # constant: Diffusion-DPO's


def test_unreadable_weights_file_is_named_after_the_checks(tiny_cache, base_with_unreadable_weights):
    from bdpo_jax.models import WeightsError

    config = tiny_train_config(tiny_cache)
    config.base_model = str(base_with_unreadable_weights)
    check(config)  # the config itself is fine
    with pytest.raises(WeightsError, match=r"cannot read weights file .*diffusion_pytorch_model\.safetensors"):
        build_trainer(config)


def test_state_lies_on_its_planned_shards_and_equals_the_unsharded_load(tiny_cache):
    config = tiny_train_config(tiny_cache)
    trainer = build_trainer(config, jax.devices())
    assert len(jax.devices()) == 4 and trainer.mesh.shape == {"data": 1, "fsdp": 4}
    planned = sharding.state_shardings(trainer.state, trainer.mesh)
    leaves, shardings = jax.tree.leaves(trainer.state), jax.tree.leaves(planned)
    assert len(leaves) == len(shardings)
    for leaf, want in zip(leaves, shardings, strict=True):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.shape, leaf.sharding, want)
    assert any(s.spec != jax.sharding.PartitionSpec() for s in shardings)  # some really are split

    from flax import nnx

    unsharded = nnx.to_pure_dict(nnx.state(load_unet(trainer.plan.unet_dir), nnx.Param))
    flat_loaded = jax.tree.leaves(trainer.state.params)
    flat_ref = jax.tree.leaves(trainer.state.ref_params)
    for loaded, ref, expected in zip(flat_loaded, flat_ref, jax.tree.leaves(unsharded), strict=True):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))
        np.testing.assert_array_equal(np.asarray(ref), np.asarray(jnp.asarray(expected).astype(ref.dtype)))


def test_rules_that_drop_pairs_open_the_cache_with_their_pairs_and_scales(tiny_cache):
    """unanimous and veto: the run's data is the pairs the rule decides, veto's scale each scorer's
    median absolute difference within a pair; checked when the cache opens, before any weight is read."""
    from bdpo_jax.data import CacheDataset
    from bdpo_jax.labels import decided_rows
    from bdpo_jax.trainer import open_dataset

    everything = CacheDataset(tiny_cache, drop_vote_ties=False)
    for spec, scale in (("unanimous", None), ("veto", everything.score_scale("difference"))):
        dataset, plan = open_dataset(check(tiny_train_config(tiny_cache, label_source=spec)))
        source = plan.step_config.label_source
        assert source.score_scale == scale
        decided = np.concatenate([decided_rows(shard, source) for shard in everything.shards])
        assert 0 < len(dataset) == decided.sum() < len(everything)
    with pytest.raises(ConfigError, match=r"larger than the cache's .* usable pairs that label_source 'unanimous'"):
        open_dataset(check(tiny_train_config(tiny_cache, label_source="unanimous", global_batch=40)))


def test_runs_of_one_program_share_its_jitted_step(tiny_cache):
    """A second run of the same program in a process (a resume, another draw) gets the jitted step of
    the first, traced and compiled once; a setting that enters the program gets a step of its own."""
    config = tiny_train_config(tiny_cache)
    first = build_trainer(config, jax.devices()[:1]).step_fn.jitted
    again = config.copy_and_resolve_references()
    again.train.seed, again.checkpoint.every = 7, 1  # the state's RNG and the loop: not the program
    assert build_trainer(again, jax.devices()[:1]).step_fn.jitted is first
    for key, value in (("train.beta", 1.0), ("optimizer.b2", 0.99), ("optimizer.warmup_steps", 3)):
        changed = config.copy_and_resolve_references()
        changed.update_from_flattened_dict({key: value})
        assert build_trainer(changed, jax.devices()[:1]).step_fn.jitted is not first, key
    assert build_trainer(config, jax.devices()[:2]).step_fn.jitted is not first  # another mesh
