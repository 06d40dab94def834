"""The preprocessing job end to end on tiny models and a synthetic Pick-a-Pic
parquet with corrupt rows: contents, rejects, resume, workers, mismatches."""

import json
import os

import ml_collections
import numpy as np
import pytest
from command_line import one_error_line, run_command

from bdpo_jax import cache as cache_format
from configs.preprocess import tiny as preprocess_tiny
from scorers_torch import preprocess
from scorers_torch.encoders import BaseModelEncoders
from scorers_torch.pickapic import PreferenceSource, SourceError, decode_image
from scorers_torch.scorers import build_scorer
from scorers_torch.testing import make_preference_parquet
from scorers_torch.votes import majority_vote

CORRUPT, EMPTY, HUMAN_TIE = (3, 11), (5,), (7,)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train-00000.parquet"
    return make_preference_parquet(
        path, 20, seed=0, size=48, corrupt_rows=CORRUPT, empty_caption_rows=EMPTY, human_tie_rows=HUMAN_TIE
    )


def make_config(parquet, pipeline, output, scorers=None, **overrides):
    config = preprocess_tiny.get_config()
    config.source = str(parquet)
    config.base_model = str(pipeline)
    config.output_dir = str(output)
    config.shard_size = 8
    config.batch_size = 4
    if scorers is not None:
        config.scorers = ml_collections.ConfigDict(scorers)
    config.update(overrides)
    return config


def all_arrays(output):
    return {
        (index, name): np.asarray(value)
        for index in sorted(cache_format.completed_shards(output))
        for name, value in cache_format.load_shard(output, index).items()
        if name != "captions"
    }


@pytest.fixture(scope="module")
def scored_cache(parquet, tiny_pipeline, tmp_path_factory):
    output = tmp_path_factory.mktemp("cache") / "scored"
    manifest = preprocess.run(make_config(parquet, tiny_pipeline, output))
    return output, manifest


def test_paper_scorers_end_to_end(parquet, tiny_pipeline, tiny_weights, tmp_path):
    config = make_config(parquet, tiny_pipeline, tmp_path / "cache", scorers=tiny_weights, tie_policy="human")
    manifest = preprocess.run(config)
    counts = manifest["counts"]
    assert counts["rows"] == 20 and counts["human_ties_dropped"] == 1 and counts["rejected"] == 3
    assert counts["pairs"] == 16 == sum(s["pairs"] for s in manifest["shards"])
    order = [s["name"] for s in manifest["scorers"]]  # the scores' columns
    assert order == sorted(tiny_weights)  # ConfigDict keeps names sorted
    assert all(len(s["weights"]) >= 1 for s in manifest["scorers"])
    assert manifest["base_model"]["latent_shape"] == [16, 16, 4]

    rejects = [json.loads(line) for line in (tmp_path / "cache" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["row"] for r in rejects) == [3, 5, 11]
    assert {r["row"]: r["reason"] for r in rejects}[5] == "empty caption"
    assert all("corrupt image" in r["reason"] for r in rejects if r["row"] in CORRUPT)

    # Recompute the first shard from scratch with the same models.
    shard = cache_format.load_shard(tmp_path / "cache", 0)
    source = PreferenceSource(parquet)
    rows = {p.row: p for p in source.pairs(0, 8)}
    pairs = [rows[int(r)] for r in shard["source_row"]]
    assert [p.row for p in pairs] == [0, 1, 2, 4, 6]  # 3 corrupt, 5 empty caption, 7 human tie
    encoders = BaseModelEncoders(tiny_pipeline)
    for side in (0, 1):
        images = [decode_image(p.jpg_0 if side == 0 else p.jpg_1) for p in pairs]
        for k, name in enumerate(order):
            expected = build_scorer(name, **tiny_weights[name]).score(images, [p.caption for p in pairs])
            np.testing.assert_allclose(shard["scores"][:, k, side], expected, rtol=1e-5, atol=1e-6)
        # Batches of another size may round differently in the last fp16 bit.
        np.testing.assert_allclose(shard[f"latents_{side}"], encoders.encode_images(images), rtol=2e-3, atol=1e-4)
    votes = majority_vote(shard["scores"], "human", shard["label_0"])
    np.testing.assert_array_equal(shard["label"], votes.label)
    np.testing.assert_array_equal(shard["votes"], votes.votes)
    text_states, _ = encoders.encode_text([p.caption for p in pairs])
    np.testing.assert_allclose(shard["text_states"][shard["caption_id"]], text_states, rtol=2e-3, atol=1e-3)
    assert [shard["captions"][i] for i in shard["caption_id"]] == [p.caption for p in pairs]


def test_empty_prompt_is_cached(scored_cache, tiny_pipeline):
    output, _ = scored_cache
    empty = np.load(output / "empty_prompt" / "text_states.npy")
    np.testing.assert_array_equal(empty, BaseModelEncoders(tiny_pipeline).encode_text([""])[0])


def test_interrupted_then_resumed_equals_uninterrupted(scored_cache, parquet, tiny_pipeline, tmp_path, monkeypatch):
    output, manifest = scored_cache
    config = make_config(parquet, tiny_pipeline, tmp_path / "cache")
    real_write = cache_format.write_arrays
    written = []

    def dies_on_second_shard(directory, arrays, extra):
        if os.path.basename(os.path.dirname(directory)) == "shards":
            if written:
                raise KeyboardInterrupt("killed")
            written.append(os.path.basename(directory))
        real_write(directory, arrays, extra)

    monkeypatch.setattr(cache_format, "write_arrays", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        preprocess.run(config)
    assert cache_format.completed_shards(tmp_path / "cache") == {0}
    assert not (tmp_path / "cache" / "manifest.json").exists()
    with pytest.raises(cache_format.CacheError, match=r"incomplete \(1 of 3 shards\)"):
        cache_format.read_manifest(tmp_path / "cache")

    monkeypatch.setattr(cache_format, "write_arrays", real_write)
    resumed = preprocess.run(config)
    assert resumed == manifest
    assert resumed["counts"] == manifest["counts"]
    a, b = all_arrays(output), all_arrays(tmp_path / "cache")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def test_two_workers_make_the_same_cache(scored_cache, parquet, tiny_pipeline, tmp_path):
    output, manifest = scored_cache
    first = preprocess.run(make_config(parquet, tiny_pipeline, tmp_path / "c", worker_index=0, num_workers=2))
    assert first is None  # shard 1 belongs to the other worker
    assert cache_format.completed_shards(tmp_path / "c") == {0, 2}
    second = preprocess.run(make_config(parquet, tiny_pipeline, tmp_path / "c", worker_index=1, num_workers=2))
    assert second["counts"] == manifest["counts"]
    a, b = all_arrays(output), all_arrays(tmp_path / "c")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def test_a_finished_job_run_again_writes_nothing(scored_cache, parquet, tiny_pipeline, monkeypatch):
    """Its output may be read-only by now: a write would fail there (as root a chmod does not stop one, so
    every writer is made to fail as a read-only disk would), and nothing on disk changes."""
    from bdpo_jax import storage

    output, manifest = scored_cache
    files = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(output.rglob("*"))}

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(args[0]))

    for writer in ("write_bytes", "atomic_directory", "remove", "rename"):
        monkeypatch.setattr(storage, writer, read_only)
    os.chmod(output, 0o555)  # read-only where the tests do not run as root
    try:
        assert preprocess.run(make_config(parquet, tiny_pipeline, output)) == manifest
    finally:
        os.chmod(output, 0o755)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(output.rglob("*"))} == files


def test_resume_with_other_settings_is_refused(scored_cache, parquet, tiny_pipeline):
    output, _ = scored_cache
    config = make_config(parquet, tiny_pipeline, output, scorers={"brightness": {}})
    with pytest.raises(cache_format.CacheError, match=r"other settings \(differing: \['scorers'\]\)"):
        preprocess.run(config)


def test_sources(parquet, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert len(PreferenceSource(parquet.parent)) == 20  # a directory of parquet files
    arrow_dir = tmp_path / "saved"
    arrow_dir.mkdir()
    with pa.ipc.new_stream(str(arrow_dir / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    saved = PreferenceSource(arrow_dir)
    assert saved.pairs(2, 4)[0].caption == table["caption"][2].as_py()
    pq.write_table(table.drop_columns(["jpg_1"]), tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match=r"lacks the column\(s\) \['jpg_1'\].*--config.columns.jpg_1="):
        PreferenceSource(tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match=r"nothing-here\.csv does not exist"):
        PreferenceSource(tmp_path / "nothing-here.csv")
    (tmp_path / "pairs.csv").write_text("caption,jpg_0\n")
    with pytest.raises(SourceError, match="not a parquet file"):
        PreferenceSource(tmp_path / "pairs.csv")


def test_mirror_column_names(parquet, tmp_path):
    """A mirror's own column names, mapped by the config, read as Pick-a-Pic's."""
    import pyarrow.parquet as pq

    from configs.preprocess.common import base_config

    renamed = {"caption": "prompt", "jpg_0": "image_a", "jpg_1": "image_b", "label_0": "pref_a", "label_1": "pref_b"}
    mirror = tmp_path / "mirror.parquet"
    table = pq.read_table(parquet)
    pq.write_table(table.rename_columns([renamed.get(c, c) for c in table.column_names]), mirror)
    with pytest.raises(SourceError, match=r"lacks the column.*'jpg_0'.*it has \['prompt', 'image_a'"):
        PreferenceSource(mirror)
    columns = base_config().columns
    columns.update(renamed)
    source = PreferenceSource(mirror, columns=columns)
    assert source.pairs(0, 20) == PreferenceSource(parquet).pairs(0, 20)
    assert source.describe()["columns"] == renamed  # in the job description: a resume must map alike
    columns.jpg_1 = "image_c"
    with pytest.raises(SourceError, match=r"lacks the column\(s\) \['image_c'\] \(Pick-a-Pic's \['jpg_1'\]\)"):
        PreferenceSource(mirror, columns=columns)
    with pytest.raises(SourceError, match=r"columns \['jpg_2'\] are not in the Pick-a-Pic schema"):
        PreferenceSource(mirror, columns={"jpg_2": "image_c"})


def test_command_line(parquet, tiny_pipeline, tmp_path, capfd):
    """``python -m scorers_torch.preprocess``'s __main__, flags and boundary, in this process (a new
    interpreter costs its imports; tests/test_imports.py imports every module in new ones)."""
    base = ["scorers_torch.preprocess", "--config", "configs/preprocess/tiny.py"]
    args = [f"--config.source={parquet}", f"--config.base_model={tiny_pipeline}", f"--config.output_dir={tmp_path}"]
    assert run_command(*base, *args, "--config.shard_size=10") == 0, capfd.readouterr().err[-3000:]
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["pairs"] == 16
    assert "pairs_per_s" in capfd.readouterr().err  # the progress bar
    assert run_command(*base, *args, "--config.shard_sise=10") == 2  # refused before loading
    assert "--config.shard_sise=10: the config has no key 'shard_sise'" in one_error_line(capfd.readouterr().err)


@pytest.mark.parametrize("model", ["sd15", "sd21", "sdxl"])
def test_paper_config_names_real_scorer_arguments(model):
    import inspect

    from configs.preprocess import paper
    from scorers_torch.scorers.base import _REGISTRY, registered_scorers

    config = paper.get_config(model)
    assert sorted(config.scorers) == ["aesthetic", "clip", "hpsv2", "pickscore"]
    assert set(registered_scorers()) >= set(config.scorers)
    for name, kwargs in config.scorers.items():
        assert set(kwargs) <= set(inspect.signature(_REGISTRY[name].__init__).parameters), name
