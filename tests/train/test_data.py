"""The cache loader: deterministic order, per-process slices, augmentation; and
the config checked against the cache before anything compiles."""

import numpy as np
import pytest

from bdpo_jax.data import Augment, CacheDataset, PairLoader
from bdpo_jax.models import UNetConfig
from bdpo_jax.models.presets import unet_preset
from bdpo_jax.trainer import cache_vs_model_problems


@pytest.fixture(scope="module")
def dataset(tiny_cache):
    return CacheDataset(tiny_cache)


def test_order_is_a_function_of_seed_and_step(dataset):
    a, b = PairLoader(dataset, 8, seed=3), PairLoader(dataset, 8, seed=3)
    for step in (0, 1, a.batches_per_epoch + 2):
        np.testing.assert_array_equal(a.batch(step)["latents_0"], b.batch(step)["latents_0"])
    epoch_0 = np.concatenate([a.global_indices(s) for s in range(a.batches_per_epoch)])
    assert len(set(epoch_0)) == len(epoch_0)  # no pair twice in an epoch
    assert not np.array_equal(a.global_indices(0), a.global_indices(a.batches_per_epoch))  # reshuffled
    assert not np.array_equal(a.global_indices(0), PairLoader(dataset, 8, seed=4).global_indices(0))


def test_processes_read_their_slices_of_the_global_batch(dataset):
    augment = Augment(flip=True, caption_dropout=0.5)
    whole = PairLoader(dataset, 8, seed=0, augment=augment).batch(5)
    parts = [PairLoader(dataset, 8, seed=0, augment=augment, process_index=i, process_count=2).batch(5) for i in (0, 1)]
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, err_msg=key)


def test_flip_and_caption_dropout(dataset):
    plain = PairLoader(dataset, 8, seed=0).batch(0)
    flipped = PairLoader(dataset, 8, seed=0, augment=Augment(flip=True)).batch(0)
    changed = [not np.array_equal(f, p) for f, p in zip(flipped["latents_0"], plain["latents_0"], strict=True)]
    assert 0 < sum(changed) < 8
    for i in np.flatnonzero(changed):
        np.testing.assert_array_equal(flipped["latents_0"][i], plain["latents_0"][i][:, ::-1])
        np.testing.assert_array_equal(flipped["latents_1"][i], plain["latents_1"][i][:, ::-1])
    dropped = PairLoader(dataset, 8, seed=0, augment=Augment(caption_dropout=1.0)).batch(0)
    assert all(np.array_equal(t, dataset.empty_prompt["text_states"]) for t in dropped["text_states"])


def test_loader_errors(dataset):
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        PairLoader(dataset, 8, seed=0, process_count=3)
    with pytest.raises(ValueError, match="larger than the cache"):
        PairLoader(dataset, 10_000, seed=0)


def test_config_mismatches_are_named(dataset, train_config):
    def problems(preset, devices=1, mesh=(1, 1)):
        unet = UNetConfig.from_diffusers(unet_preset(preset))
        return "\n".join(cache_vs_model_problems(train_config, dataset.manifest["base_model"], unet, devices, mesh))

    assert "text states are 32 wide, the UNet attends to 48" in problems("tiny-sd2")
    assert "SDXL-style" in problems("tiny-sdxl")
    assert problems("micro-sd1") == ""
    train_config.train.grad_accum = 3
    assert "grad_accum 3" in problems("micro-sd1")
    train_config.train.grad_accum = 1
    assert "for the 8 devices (mesh data 2 x fsdp 4)" in problems("micro-sd1", 8, (2, 4))


def test_a_rule_that_drops_pairs_leaves_them_out_of_the_data(tiny_cache):
    """unanimous: the loader's pairs are exactly the cache's usable pairs on which every scorer agrees."""
    from bdpo_jax.labels import LabelSource, decided_rows

    rule = LabelSource("unanimous")
    everything, kept = CacheDataset(tiny_cache, drop_vote_ties=False), CacheDataset(tiny_cache, drop_vote_ties=False)
    kept.keep_only(lambda shard: decided_rows(shard, rule))
    votes = everything.gather(np.arange(len(everything)))["votes"]
    agree = (votes == votes[:, :1]).all(axis=1)
    assert 0 < len(kept) == agree.sum() < len(everything)
    batch = kept.gather(np.arange(len(kept)))
    assert (batch["votes"] == batch["votes"][:, :1]).all()


def test_score_scales_by_hand(dataset):
    """'normalized' reads each scorer's std over the images, 'veto' the median absolute difference within a pair."""
    scores = dataset.gather(np.arange(len(dataset)))["scores"].astype(np.float64)
    std = scores.transpose(0, 2, 1).reshape(-1, scores.shape[1]).std(axis=0)
    np.testing.assert_allclose(dataset.score_scale(), std, rtol=1e-6)
    np.testing.assert_allclose(dataset.score_scale("difference"), np.median(np.abs(scores[..., 0] - scores[..., 1]), 0),
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="std or difference"):
        dataset.score_scale("mean")
