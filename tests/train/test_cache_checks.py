"""The cache reader against damaged or edited caches (#15): every problem a
``CacheError`` naming the file and the fix, found when the cache is opened
(non-finite latents and text states: when their batch is read), never a raw
traceback or a silently wrong batch."""

import json
import shutil

import numpy as np
import pytest

from bdpo_jax.cache import CacheError
from bdpo_jax.data import CacheDataset, PairLoader


@pytest.fixture
def cache(tiny_cache, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(tiny_cache, copy)
    return copy


def edit_array(path, edit):
    array = np.load(path)
    array = edit(array.copy())
    np.save(path, array)


def manifest_of(cache):
    return json.loads((cache / "manifest.json").read_text())


def write_manifest(cache, manifest):
    (cache / "manifest.json").write_text(json.dumps(manifest))


def opens_with(cache, match):
    with pytest.raises(CacheError, match=match):
        CacheDataset(cache)


def test_truncated_array(cache):
    path = cache / "shards" / "00001" / "latents_0.npy"
    path.write_bytes(path.read_bytes()[:-100])
    opens_with(cache, r"shards/00001/latents_0.npy is truncated.*run the preprocessing job again")
    small = cache / "shards" / "00002" / "scores.npy"
    small.write_bytes(small.read_bytes()[:60])
    opens_with(cache, r"shards/00002/scores.npy")


def test_invalid_manifest(cache):
    (cache / "manifest.json").write_text('{"format_version": 2, "shards": [')
    opens_with(cache, r"manifest.json is not valid JSON")
    write_manifest(cache, {"format_version": 1})
    opens_with(cache, r"manifest.json lacks 'base_model'")


def test_missing_array(cache):
    (cache / "shards" / "00000" / "keep.npy").unlink()
    opens_with(cache, r"shards/00000.* lacks keep.npy")


def test_caption_id_out_of_range(cache):
    edit_array(cache / "shards" / "00000" / "caption_id.npy", lambda a: np.where(np.arange(len(a)) == 3, 999, a))
    opens_with(cache, r"shards/00000/caption_id.npy: caption ids up to 999 for 1[0-9] captions")


def test_manifest_and_arrays_disagree(cache):
    manifest = manifest_of(cache)
    write_manifest(cache, {**manifest, "scorers": manifest["scorers"][:2]})
    opens_with(cache, r"shards/00000/scores.npy has rows of shape \(3, 2\); the manifest says \(2, 2\)")
    write_manifest(cache, {**manifest, "shards": manifest["shards"][:2]})
    opens_with(cache, r"manifest.json lists 2 shards; the job made 3")
    write_manifest(cache, {**manifest, "base_model": {**manifest["base_model"], "latent_shape": [8, 8, 4]}})
    opens_with(cache, r"latents_0.npy has rows of shape \(16, 16, 4\); the manifest says \(8, 8, 4\)")
    shards = [dict(s) for s in manifest["shards"]]
    shards[1]["pairs"] += 1
    write_manifest(cache, {**manifest, "shards": shards})
    opens_with(cache, r"shards/00001/latents_0.npy has 16 rows; the manifest says 17")


def test_non_finite_or_impossible_values_at_open(cache):
    edit_array(
        cache / "shards" / "00001" / "scores.npy",
        lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a),
    )
    opens_with(cache, r"shards/00001/scores.npy holds 1 value that is not finite")


def test_impossible_labels_at_open(cache):
    edit_array(cache / "shards" / "00002" / "label_0.npy", lambda a: np.where(np.arange(len(a)) == 0, 0.3, a))
    opens_with(cache, r"shards/00002/label_0.npy holds values other than 0, 0.5 and 1")


def test_non_finite_latents_are_found_when_read(cache):
    edit_array(
        cache / "shards" / "00002" / "latents_1.npy",
        lambda a: np.where(np.arange(len(a))[:, None, None, None] == 4, np.inf, a).astype(a.dtype),
    )
    dataset = CacheDataset(cache)  # latents are not read whole at open
    loader = PairLoader(dataset, 8, seed=0)
    with pytest.raises(CacheError, match=r"shards/00002/latents_1.npy row 4 is not finite"):
        for step in range(loader.batches_per_epoch):
            loader.batch(step)


def test_manifest_against_job_json_and_the_arrays_family(cache):
    """An edited scorer order trained on one scorer's column under another's name, silently (#24)."""
    manifest = manifest_of(cache)
    write_manifest(cache, {**manifest, "scorers": manifest["scorers"][::-1]})
    opens_with(
        cache,
        r"manifest.json differs from .*job.json, which wrote the arrays, in \['scorers'\] \(scorers "
        r"\['saturation', 'prompt_match', 'brightness'\] in the manifest, \['brightness', 'prompt_match', "
        r"'saturation'\] in the arrays\): .*delete it and run the preprocessing job again",
    )
    base = manifest["base_model"]
    write_manifest(cache, {**manifest, "base_model": {**base, "family": "sdxl"}})
    opens_with(cache, r"says the base model family is 'sdxl' with pooled_dim None, where an SDXL-family model has")
    write_manifest(cache, {**manifest, "base_model": {**base, "family": "sdxl", "pooled_dim": 1280}})
    opens_with(cache, r"describes an SDXL-family model, but no shard holds pooled.npy: its arrays are an SD1/SD2")
    write_manifest(cache, manifest)
    np.save(cache / "shards" / "00001" / "pooled.npy", np.zeros((3, 8), np.float16))
    opens_with(cache, r"describes an SD1/SD2-family model, but .*shards/00001 holds pooled.npy")
