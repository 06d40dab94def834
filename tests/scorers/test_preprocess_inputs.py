"""Preprocessing against bad input, as a hostile user would give it (#15): settings
checked before job.json, rows with bad labels, captions, scores, latents or
images rejected and listed, a changed source or base model refused on resume,
two jobs into one directory, leftovers of dead processes, unwritable outputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from command_line import one_error_line, run_command
from PIL import Image

from bdpo_jax import cache as cache_format
from bdpo_jax import storage
from bdpo_jax.errors import UserError
from configs.preprocess import tiny as preprocess_tiny
from scorers_torch import preprocess
from scorers_torch.encoders import BaseModelEncoders
from scorers_torch.pickapic import PreferenceSource, SourceError, TableError, decode_image
from scorers_torch.testing import make_preference_parquet


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_preference_parquet(tmp_path_factory.mktemp("src") / "pairs.parquet", 8, seed=2, size=32)


def make_config(source, pipeline, output, **overrides):
    config = preprocess_tiny.get_config()
    config.source, config.base_model, config.output_dir = str(source), str(pipeline), str(output)
    config.shard_size, config.batch_size = 4, 4
    config.update(overrides)
    return config


def rejects_of(output):
    return {r["row"]: r["reason"] for r in map(json.loads, storage.read_text(f"{output}/rejects.jsonl").splitlines())}


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("shard_size", 0, "shard_size 0 must be at least 1"),
        ("batch_size", 0, "batch_size 0 must be at least 1"),
        ("limit", -1, "limit -1 must be at least 0"),
        ("num_workers", 0, "num_workers 0 must be at least 1"),
        ("tie_policy", "dorp", "tie_policy 'dorp'"),
        ("resolution", 0, "resolution 0 must be positive"),
        ("max_image_pixels", 0, "max_image_pixels 0 must be at least 1"),
    ],
)
def test_settings_are_checked_before_job_json(source, tiny_pipeline, tmp_path, key, value, message):
    with pytest.raises(UserError, match=message):
        preprocess.run(make_config(source, tiny_pipeline, tmp_path / "out", **{key: value}))
    assert not (tmp_path / "out" / "job.json").exists()  # a typo does not lock the output directory


def bad_rows_parquet(source, path):
    """Row 0 a null label, 1 a NaN label, 2 a label of 0.3, 3 labels summing to 2, 4 a non-UTF-8 caption."""
    table = pq.read_table(source).to_pydict()
    label_0, label_1 = table["label_0"], table["label_1"]
    label_0[0], label_0[1], label_0[2] = None, float("nan"), 0.3
    label_1[2] = 0.7
    label_0[3], label_1[3] = 1.0, 1.0
    captions = [c.encode() for c in table["caption"]]
    captions[4] = b"a red \xff\xfe circle"
    offsets = np.cumsum([0] + [len(c) for c in captions]).astype(np.int32)
    caption = pa.Array.from_buffers(
        pa.string(), len(captions), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(captions))]
    )
    columns = {**table, "caption": caption, "label_0": pa.array(label_0, pa.float64())}
    pq.write_table(pa.table(columns), path)
    return path


def test_bad_labels_and_captions_are_rejected_and_listed(source, tiny_pipeline, tmp_path):
    bad = bad_rows_parquet(source, tmp_path / "bad.parquet")
    manifest = preprocess.run(make_config(bad, tiny_pipeline, tmp_path / "out"))
    rejects = rejects_of(tmp_path / "out")
    assert sorted(rejects) == [0, 1, 2, 3, 4]
    assert "label_0 is missing" in rejects[0]
    assert "label_0 nan is not finite" in rejects[1]
    assert "label_0 0.3 is not 0, 0.5 or 1" in rejects[2]
    assert "label_0 + label_1 = 2" in rejects[3]
    assert "caption is not UTF-8 text" in rejects[4]
    assert manifest["counts"]["rejected"] == 5 and manifest["counts"]["pairs"] == 3


def test_rows_all_rejected(source, tiny_pipeline, tmp_path):
    """A shard whose rows were all rejected is written in the cache's shapes (the trainer read the cache as
    damaged); a cache with no usable pair says so and points at rejects.jsonl (it said: damaged, remake it)."""
    from bdpo_jax.data import CacheDataset

    table = pq.read_table(source).to_pydict()
    table["label_0"] = [0.3] * 4 + table["label_0"][4:]  # shard 0 (rows 0-3) all rejected
    pq.write_table(pa.table(table), tmp_path / "half.parquet")
    preprocess.run(make_config(tmp_path / "half.parquet", tiny_pipeline, tmp_path / "half"))
    assert len(CacheDataset(tmp_path / "half")) == 4
    table["label_0"] = [0.3] * 8
    pq.write_table(pa.table(table), tmp_path / "none.parquet")
    assert (
        preprocess.run(make_config(tmp_path / "none.parquet", tiny_pipeline, tmp_path / "none"))["counts"]["pairs"] == 0
    )
    with pytest.raises(
        cache_format.CacheError,
        match=r"no usable pairs: preprocessing rejected 8 of its 8 source rows "
        r"\(each with its reason in .*none/rejects.jsonl\)",
    ):
        CacheDataset(tmp_path / "none")


class FakeEncoders:
    """Latents and text states of the right shapes; NaN where told."""

    def __init__(self, nan_image=None, nan_caption=None):
        self.nan_image, self.nan_caption = nan_image, nan_caption

    def describe(self):
        return {"latent_shape": [2, 2, 1]}

    def encode_images(self, images):
        out = np.array([[[[np.mean(np.asarray(im))]]] for im in images], np.float16) * np.ones((1, 2, 2, 1), np.float16)
        if self.nan_image is not None:
            for i, im in enumerate(images):
                if im.info.get("row") == self.nan_image:
                    out[i, 0, 0, 0] = np.inf
        return out

    def encode_text(self, captions):
        out = np.ones((len(captions), 3, 2), np.float16)
        out[[c == self.nan_caption for c in captions]] = np.nan
        return out, None


class NanScorer:
    def __init__(self, row):
        self.row = row

    def score(self, images, prompts):
        return np.array([np.nan if im.info.get("row") == self.row else 1.0 for im in images], np.float32)


def test_non_finite_scores_latents_and_text_states_are_rejected(source, monkeypatch):
    pairs = PreferenceSource(source).pairs(0, 8)
    real_decode = decode_image

    def decode_tagged(data, *args, **kwargs):  # remembers the row, so the fakes can pick one
        image = real_decode(data, *args, **kwargs)
        image.info["row"] = next(p.row for p in pairs if data in (p.jpg_0, p.jpg_1))
        return image

    monkeypatch.setattr(preprocess, "decode_image", decode_tagged)
    config = make_config(source, "unused", "unused", batch_size=3, drop_human_ties=False)
    caption_of_6 = pairs[6].caption
    encoders = FakeEncoders(nan_image=2, nan_caption=caption_of_6)
    arrays, extra = preprocess.process_shard(pairs, config, encoders, [NanScorer(row=5)])
    rejected = {r["row"]: r["reason"] for r in extra["rejects.jsonl"]}
    assert "latent" in rejected[2] and "not finite" in rejected[2]
    assert "score" in rejected[5] and "not finite" in rejected[5]
    assert all("text states" in rejected[p.row] for p in pairs if p.caption == caption_of_6)
    assert not {2, 5, 6} & set(arrays["source_row"].tolist())
    for name in ("latents_0", "latents_1", "scores", "text_states"):
        assert np.isfinite(arrays[name]).all(), name
    assert len(arrays["text_states"]) == len(extra["captions.json"]) == len(set(arrays["caption_id"].tolist()))


def png_bytes(array, mode=None):
    buffer = __import__("io").BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_high_bit_depth_images_are_scaled_by_range_not_clipped():
    grey16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    image = decode_image(png_bytes(grey16))
    assert image.mode == "RGB"
    got = np.asarray(image)[..., 0].astype(int)
    expected = np.round(grey16 / 257).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert got.max() < 255 or expected.max() == 255  # not clipped to white
    assert (got == 255).mean() < 0.01


def test_huge_or_thin_images_are_rejected_before_decoding():
    thin = png_bytes(np.zeros((1, 400_000), np.uint8))
    assert len(thin) < 2000
    with pytest.raises(ValueError, match=r"1x400000 pixels.*aspect ratio"):
        decode_image(thin)
    big = png_bytes(np.zeros((3000, 3000), np.uint8))
    with pytest.raises(ValueError, match=r"3000x3000 pixels.*max_image_pixels"):
        decode_image(big, max_pixels=4_000_000)


def test_pixels_never_resize_the_whole_of_a_thin_image(tiny_pipeline, monkeypatch):
    encoders = BaseModelEncoders(tiny_pipeline)
    sizes = []
    real_resize = Image.Image.resize

    def recording(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    thin = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 2000, 3), np.uint8))
    pixels = encoders.pixels(thin)
    assert tuple(pixels.shape) == (3, encoders.resolution, encoders.resolution)
    assert max(w * h for w, h in sizes) <= encoders.resolution**2  # not 128 x 12800 first


def test_a_changed_source_or_base_model_is_refused_on_resume(source, tiny_pipeline, tmp_path):
    data, pipeline = tmp_path / "pairs.parquet", tmp_path / "pipeline"
    shutil.copy(source, data)
    shutil.copytree(tiny_pipeline, pipeline)
    config = make_config(data, pipeline, tmp_path / "out", limit=4)
    preprocess.run(config)
    os.utime(data, (1, 1))  # a copy or a touch: same bytes, so the same source
    preprocess.run(config)

    table = pq.read_table(data).to_pydict()
    table["caption"][1] = table["caption"][1] + " again"
    pq.write_table(pa.table(table), data)
    with pytest.raises(cache_format.CacheError, match=r"differing: \['source.files"):
        preprocess.run(config)
    shutil.copy(source, data)
    preprocess.run(config)  # the original source back: resumes

    vae = pipeline / "vae" / "diffusion_pytorch_model.safetensors"
    from safetensors.numpy import load_file, save_file

    weights = load_file(vae)
    save_file({k: v + 1 if k.endswith("bias") else v for k, v in weights.items()}, vae)
    with pytest.raises(cache_format.CacheError, match=r"differing: \['base_model.weights.vae'\]"):
        preprocess.run(config)


def test_two_identical_jobs_into_one_directory_both_finish(source, tiny_pipeline, tmp_path, monkeypatch):
    """Job A has computed shard 0 but not written it when job B, into the same directory, runs
    to the end: A then finds B's shards and keeps them. (Two jobs are two processes in real use;
    B runs inside A's step here, so that the interleaving is certain and no two threads load
    models at once: from_pretrained is not thread-safe.)"""
    output = tmp_path / "out"
    config = make_config(source, tiny_pipeline, output)
    real, second = preprocess.process_shard, []

    def job_b_finishes_first(pairs, *args):
        result = real(pairs, *args)
        if pairs[0].row == 0 and not second:
            second.append(None)  # job B itself runs unhooked
            second[0] = preprocess.run(config)
        return result

    monkeypatch.setattr(preprocess, "process_shard", job_b_finishes_first)
    first = preprocess.run(config)
    assert second and first == second[0]
    assert cache_format.completed_shards(output) == {0, 1}
    assert not [n for n in os.listdir(output / "shards") if n.startswith(".")]


def test_leftovers_of_dead_processes_are_removed_on_resume(source, tiny_pipeline, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    output = tmp_path / "out"
    config = make_config(source, tiny_pipeline, output)
    preprocess.run(config)
    shards = output / "shards"
    leftovers = [shards / f".00001.tmp-{dead.pid}", shards / f".00000.tmp-{os.uname().nodename}-{dead.pid}-7"]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "latents_0.npy").write_bytes(b"half")
    alive = shards / f".00001.tmp-{os.uname().nodename}-{os.getpid()}-1"  # a live writer's: kept
    alive.mkdir()
    preprocess.run(config)
    assert not any(p.exists() for p in leftovers)
    assert alive.exists()


def test_a_relative_path_that_does_not_exist_is_a_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"data/pairs does not exist"):
        PreferenceSource("data/pairs")
    with pytest.raises(SourceError, match=r"hf://org/name"):
        PreferenceSource("org/name")


def test_a_cut_short_source_file_is_named(source, tmp_path):
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(source.read_bytes()[:5000])
    with pytest.raises(TableError, match=r"cut.parquet cannot be read \(.*magic bytes not found.*\): .*fetch it again"):
        PreferenceSource(cut)
    saved = tmp_path / "saved"  # datasets' save_to_disk: arrow streams
    saved.mkdir()
    table = pq.read_table(source)
    with pa.ipc.new_stream(str(saved / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    stream = saved / "data-00000-of-00001.arrow"
    stream.write_bytes(stream.read_bytes()[:20000])
    with pytest.raises(TableError, match=r"data-00000-of-00001.arrow cannot be read \(Expected to be able to read"):
        PreferenceSource(saved)


def test_an_unwritable_output_is_named(source, tiny_pipeline, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"cannot write .*a-file/out.*writable output_dir"):
        preprocess.run(make_config(source, tiny_pipeline, blocker / "out"))


def test_command_line_errors_are_one_line(source, tiny_pipeline, tmp_path, capfd):
    args = [f"--config.source={source}", f"--config.base_model={tiny_pipeline}", f"--config.output_dir={tmp_path}"]
    config = "--config=configs/preprocess/tiny.py"
    assert run_command("scorers_torch.preprocess", config, *args, "--config.shard_size=0") == 2
    assert "shard_size 0 must be at least 1" in one_error_line(capfd.readouterr().err)


def test_a_full_disk_is_one_line_and_the_job_resumes(source, tiny_pipeline, tmp_path, monkeypatch, capfd):
    """The disk fills while shard 1 is written (as numpy's write reports it): one line naming the shard, exit 2,
    shard 0 kept; run again with space, the job finishes (that a resumed job makes the uninterrupted job's cache
    is test_preprocess.py's test_interrupted_then_resumed_equals_uninterrupted)."""
    config = ["--config=configs/preprocess/tiny.py", f"--config.source={source}", "--config.shard_size=4"]
    config += [f"--config.base_model={tiny_pipeline}", "--config.batch_size=4"]
    real_save = storage.DirectoryWriter.save_array

    def disk_full_at_shard_1(writer, name, array):
        if ".00001.tmp" in writer.root:
            raise OSError(28, "No space left on device")  # no file name, as numpy's write to a file object
        return real_save(writer, name, array)

    with monkeypatch.context() as patch:
        patch.setattr(storage.DirectoryWriter, "save_array", disk_full_at_shard_1)
        assert run_command("scorers_torch.preprocess", *config, f"--config.output_dir={tmp_path / 'out'}") == 2
    line = one_error_line(capfd.readouterr().err)
    assert line.startswith(f"error: No space left on device under {tmp_path / 'out' / 'shards' / '00001'}: free")
    assert cache_format.completed_shards(tmp_path / "out") == {0}
    assert run_command("scorers_torch.preprocess", *config, f"--config.output_dir={tmp_path / 'out'}") == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["rows"] == 8


def test_a_truncated_weight_file_of_the_base_model_is_named(tiny_pipeline, tmp_path):
    from scorers_torch.encoders import BaseModelError

    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline, pipeline)
    weights = pipeline / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(BaseModelError, match=r"cannot load vae/ .*copy or download vae/ again"):
        BaseModelEncoders(pipeline)
