"""The evaluation end to end on tiny pipelines and the weight-free scorers:
files, tables against a hand computation from the stored scores, paired seeds,
a model against itself, added models, resume after a kill, workers, bad input."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bdpo_jax.errors import UserError
from bdpo_jax.workdir import WorkdirError
from configs.evaluate import tiny
from scorers_torch import evaluate
from scorers_torch.evaluation import generate as generation
from scorers_torch.evaluation.outputs import ROW_COLUMNS, OutputMismatchError
from scorers_torch.evaluation.prompts import PromptSetError
from scorers_torch.scorers import build_scorer
from scorers_torch.scorers.base import WeightFileError

# 3 prompts x 2 images, 2 sampler steps; batches of 2 and blocks of 2 prompts, so
# that a run has several pipeline calls and resume units.
OVERRIDES = {
    "prompts.shapes.limit": 3,
    "images_per_prompt": 2,
    "sampler.num_inference_steps": 2,
    "batch_size": 2,
    "block_size": 2,
    "grid.cell_size": 64,
    "bootstrap.resamples": 200,
}
METRICS = ["saturation", "brightness", "prompt_match"]


def make_config(output, models, **overrides):
    config = tiny.get_config()
    for key, value in {**OVERRIDES, **overrides}.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    for name, path in models.items():
        config.models[name] = str(path)
    config.output_dir = str(output)
    return config


class Counter:
    """Wraps evaluate.generate to count the images a run makes, per model."""

    def __init__(self, monkeypatch):
        self.images: dict[str, int] = {}
        real = evaluate.generate

        def counted(pipeline, info, prompts, seeds, *args):
            self.images[info.name] = self.images.get(info.name, 0) + len(prompts)
            return real(pipeline, info, prompts, seeds, *args)

        monkeypatch.setattr(evaluate, "generate", counted)


@pytest.fixture(scope="module")
def evaluated(pipelines, tmp_path_factory):
    """base and trained; then "same" (base's directory under another name) added to the same output."""
    output = tmp_path_factory.mktemp("eval") / "out"
    first = evaluate.run(make_config(output, pipelines))
    mtimes = {p: p.stat().st_mtime_ns for p in output.glob("images/*/*/*.png")}
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = Counter(monkeypatch)
        models = {**pipelines, "same": pipelines["base"]}
        second = evaluate.run(make_config(output, models, comparisons="*:base"))
    return {"output": output, "first": first, "second": second, "added_images": counter.images, "mtimes": mtimes}


def read_rows(path, models=None):
    table = pq.read_table(path).to_pylist()
    rows = {(r["model"], r["prompt_index"], r["image_index"]): r for r in table}
    return {k: v for k, v in rows.items() if models is None or k[0] in models}


def test_files_rows_and_image_names(evaluated, pipelines):
    output, results = evaluated["output"], evaluated["second"]
    rows = read_rows(output / "scores.parquet")
    assert pq.read_schema(output / "scores.parquet").names == [*ROW_COLUMNS, *METRICS]
    assert len(rows) == 3 * 3 * 2  # models x prompts x images
    prompts = {r["prompt_index"] for r in rows.values()}
    assert len(prompts) == 3
    for (model, prompt_index, image_index), row in rows.items():
        seed = generation.image_seed(0, "shapes", prompt_index, image_index)
        assert row["seed"] == seed
        assert row["image"] == f"images/shapes/{model}/{prompt_index:05d}_{seed}.png"
        assert (output / row["image"]).is_file()
    # Stored scores are the scorers' scores of the stored images.
    row = rows["trained", min(prompts), 1]
    with Image.open(output / row["image"]) as image:
        for metric in METRICS:
            assert build_scorer(metric).score([image.convert("RGB")], [row["prompt"]])[0] == row[metric]
    for name in ("tables.md", "win_rates.csv", "model_scores.csv", "results.json"):
        assert (output / name).is_file()
    assert len((output / "win_rates.csv").read_text().splitlines()) == 1 + 2 * 3  # two comparisons x 3 metrics
    grid = Image.open(results.grids["shapes"])
    column = (grid.width - 64) / 3 - 6  # prompt column + three model columns, 6 px apart
    assert column == int(column) and column > 64  # wider than the 64 px images: the score lines fit
    page = results.pages["shapes"].read_text()
    assert all(f"../{r['image']}" in page for r in rows.values())
    assert results.charts["shapes"].is_file()
    assert not list(output.glob("*.lock"))  # released
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["generation"]["num_inference_steps"] == 2 and manifest["generation"]["dtype"] == "float32"
    assert manifest["models"]["same"]["path"] == str(pipelines["base"].resolve())
    assert set(manifest["scorers"]) == set(METRICS)


def test_tables_match_a_hand_computation_from_the_scores(evaluated):
    rows = read_rows(evaluated["output"] / "scores.parquet")
    results = evaluated["second"]
    prompts = sorted({k[1] for k in rows})
    for metric in METRICS:
        best = {
            m: np.array([max(rows[m, p, i][metric] for i in range(2)) for p in prompts]) for m in ("base", "trained")
        }
        wins = (best["trained"] > best["base"]) + 0.5 * (best["trained"] == best["base"])
        cell = results.tables.win_rate("trained", "base", "shapes", metric)
        assert cell.win_rate == wins.mean() and cell.prompts == 3
        assert cell.low <= cell.win_rate <= cell.high
    assert [f"{a} vs {b}" for a, b in results.tables.comparisons] == ["trained vs base", "same vs base"]
    assert "trained vs base" in results.text and "same vs base" in results.text
    saved = json.loads((evaluated["output"] / "results.json").read_text())
    assert saved["worst"]["trained vs base"] == vars(results.tables.worst("trained", "base"))


def test_a_model_against_itself_ties_every_prompt(evaluated):
    output, tables = evaluated["output"], evaluated["second"].tables
    rows = read_rows(output / "scores.parquet")
    for (model, p, i), row in rows.items():
        if model == "same":
            base = np.asarray(Image.open(output / rows["base", p, i]["image"]))
            assert np.array_equal(np.asarray(Image.open(output / row["image"])), base)  # bit-identical
            assert not np.array_equal(np.asarray(Image.open(output / rows["trained", p, i]["image"])), base)
    for metric in METRICS:
        cell = tables.win_rate("same", "base", "shapes", metric)
        assert (cell.win_rate, cell.low, cell.high, cell.ties) == (0.5, 0.5, 0.5, cell.prompts)


def test_an_added_model_is_the_only_new_work(evaluated):
    assert evaluated["added_images"] == {"same": 3 * 2}
    for path, mtime in evaluated["mtimes"].items():
        assert path.stat().st_mtime_ns == mtime
    first, second = evaluated["first"].tables, evaluated["second"].tables
    assert first.win_rates == tuple(w for w in second.win_rates if (w.a, w.b) == ("trained", "base"))


def test_new_comparisons_need_no_generation_or_scorers(evaluated, pipelines, monkeypatch):
    counter = Counter(monkeypatch)
    monkeypatch.setattr(evaluate, "build_scorers", lambda *a: pytest.fail("no scorer should be loaded"))
    models = {**pipelines, "same": pipelines["base"]}
    results = evaluate.run(make_config(evaluated["output"], models, comparisons="base:trained"))
    assert counter.images == {}
    cell = results.tables.win_rate("base", "trained", "shapes", "brightness")
    reverse = evaluated["second"].tables.win_rate("trained", "base", "shapes", "brightness")
    assert cell.win_rate == 1 - reverse.win_rate


def test_same_seed_same_initial_latents_in_every_model(pipelines):
    """What each pipeline's UNet first sees is the same noise for the same seeds, whatever the weights."""
    infos = {name: generation.describe_model(name, str(path)) for name, path in pipelines.items()}
    first_input = {}
    for name, info in infos.items():
        pipeline = generation.load_pipeline(info, torch.device("cpu"), torch.float32)
        seen: list[torch.Tensor] = []
        pipeline.unet.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0].clone()))
        generation.generate(pipeline, info, ["a red circle", "a blue square"], [7, 8], 7.5, 1)
        first_input[name] = seen[0]
    assert torch.equal(first_input["base"], first_input["trained"])
    noise, _ = generation.initial_latents([7, 8], infos["base"].latent_shape)
    assert torch.equal(noise[0], torch.randn(infos["base"].latent_shape, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(noise[0], noise[1])
    # Classifier-free guidance runs the unconditional and conditional halves on the same noise.
    sigma = pipeline.scheduler.init_noise_sigma
    assert torch.equal(first_input["base"], torch.cat([noise, noise]) * sigma)


def cli(pipelines, output, *extra):
    command = [sys.executable, "-m", "scorers_torch.evaluate", "--config", "configs/evaluate/tiny.py"]
    command += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    command += [f"--config.models.{name}={path}" for name, path in pipelines.items()]
    return [*command, f"--config.output_dir={output}", *extra]


def test_killed_run_resumes_to_the_same_tables(evaluated, pipelines, tmp_path, monkeypatch):
    output = tmp_path / "out"
    # The run kills itself (SIGKILL) right after its third image is saved: part way through
    # for certain (killing it from here when an image appears raced a fast run to its end).
    kill_after_three = (
        "import os, runpy, signal, sys\n"
        "from scorers_torch.evaluation import outputs\n"
        "real, saved = outputs.save_image, []\n"
        "def save_image(image, path):\n"
        "    real(image, path)\n"
        "    saved.append(path)\n"
        "    if len(saved) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "outputs.save_image = save_image\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_module('scorers_torch.evaluate', run_name='__main__', alter_sys=True)\n"
    )
    command = cli(pipelines, output)
    process = subprocess.Popen(
        [command[0], "-c", kill_after_three, *command[2:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    log = process.communicate(timeout=600)[0].decode()
    assert process.returncode == -signal.SIGKILL, log[-2000:]
    made = len(list(output.glob("images/*/*/*.png")))
    assert 0 < made < 12, log[-2000:]  # killed part way through
    assert not (output / "scores.parquet").exists()
    assert "Traceback" not in log

    counter = Counter(monkeypatch)
    results = evaluate.run(make_config(output, pipelines))
    assert sum(counter.images.values()) < 12  # what was on disk was not made again
    assert read_rows(output / "scores.parquet") == read_rows(evaluated["output"] / "scores.parquet", pipelines)
    assert results.tables == evaluated["first"].tables


def test_workers_split_the_blocks(evaluated, pipelines, tmp_path):
    output = tmp_path / "out"
    base = {"base": pipelines["base"]}
    assert evaluate.run(make_config(output, base, num_workers=2, worker_index=0)) is None  # one of two blocks
    assert len(list(output.glob("scores/shapes/base/*.parquet"))) == 1
    results = evaluate.run(make_config(output, base, num_workers=2, worker_index=1))
    assert results is not None
    assert read_rows(output / "scores.parquet") == read_rows(evaluated["output"] / "scores.parquet", ["base"])


def test_bad_input_is_named_and_loses_nothing(evaluated, pipelines, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(evaluated["output"], output)
    images = sorted(p.stat().st_mtime_ns for p in output.glob("images/*/*/*.png"))

    def fails(error, match, models=pipelines, **overrides):
        with pytest.raises(error, match=match):
            evaluate.run(make_config(output, models, **overrides))

    fails(generation.PipelineError, r"model 'x'.*is not a diffusers pipeline directory", {"x": tmp_path})
    fake_xl = tmp_path / "xl"
    shutil.copytree(pipelines["base"], fake_xl)
    index = json.loads((fake_xl / "model_index.json").read_text())
    (fake_xl / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    unet = json.loads((fake_xl / "unet" / "config.json").read_text())
    (fake_xl / "unet" / "config.json").write_text(json.dumps({**unet, "cross_attention_dim": 2048, "sample_size": 32}))
    fails(
        generation.PipelineError,
        r"xl is sdxl with latents \(4, 32, 32\) and base is .* latents \(4, 16, 16\).*allow_mixed_families",
        {**pipelines, "xl": fake_xl},
    )
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"text": ["a"]}), prompts)
    config = make_config(output, pipelines)
    config.prompts.pick = ml_collections.ConfigDict({"kind": "pickapic", "path": str(prompts)})
    with pytest.raises(PromptSetError, match=r"no column 'caption'.*--config.prompts.pick.column"):
        evaluate.run(config)
    config = make_config(output, pipelines)
    config.scorers.hpsv2 = ml_collections.ConfigDict({"checkpoint": str(tmp_path / "HPS_v2_compressed.pt")})
    with pytest.raises(WeightFileError, match=r"HPS_v2_compressed.pt does not exist"):
        evaluate.run(config)
    config.scorers.hpsv2 = ml_collections.ConfigDict({"checkpont": "x"})
    with pytest.raises(UserError, match=r"scorer 'hpsv2' \(--config.scorers.hpsv2\): .*takes no argument"):
        evaluate.run(config)
    fails(OutputMismatchError, r"other generation settings \(differing: \['num_inference_steps'\]\)", **{
        "sampler.num_inference_steps": 3
    })  # fmt: skip
    fails(OutputMismatchError, r"models entry 'base' made otherwise", {"base": pipelines["trained"]})
    fails(UserError, r"comparison 'trained:nobody': no model named 'nobody'", comparisons="trained:nobody")
    fails(UserError, r"model name 'a b'", {"a b": pipelines["base"]})
    lock = output / "evaluate-worker-0.lock"  # another evaluation into this folder, alive (the test's parent)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "since": "today"}))
    fails(WorkdirError, rf"in use by another evaluation: process {os.getppid()} .*use another --config.output_dir")
    lock.unlink()
    assert sorted(p.stat().st_mtime_ns for p in output.glob("images/*/*/*.png")) == images  # nothing lost or redone
    assert read_rows(output / "scores.parquet") == read_rows(evaluated["output"] / "scores.parquet")


def test_paper_config_checks(tmp_path):
    from configs.evaluate import paper

    for model, guidance in (("sd15", 7.5), ("sd21", 7.5), ("sdxl", 5.0)):
        config = paper.get_config(model)
        assert list(config.scorers) == ["hpsv2", "clip", "pickscore", "aesthetic"]
        assert list(config.prompts) == ["pickapic", "partiprompts", "hpdv2"]
        assert config.sampler.guidance_scale == guidance and config.sampler.num_inference_steps == 50
    config = paper.get_config("sd15")
    config.models.base = str(tmp_path)
    config.output_dir = str(tmp_path / "out")
    with pytest.raises(UserError, match=r"no prompt set to evaluate on: set --config.prompts.pickapic.path"):
        evaluate.load_prompt_sets(config)
    assert evaluate.split_model_flags(["x", "--config.models.b=/1", "--config.models.a", "/2", "--config.seed=1"]) == (
        ["x", "--config.seed=1"],
        [("b", "/1"), ("a", "/2")],
    )
    assert evaluate.parse_comparisons(None, ["a", "b", "c"]) == [("b", "a"), ("c", "a"), ("c", "b")]
    assert evaluate.parse_comparisons("*:b,a:c", ["a", "b", "c"]) == [("a", "b"), ("c", "b"), ("a", "c")]


def test_an_output_in_object_storage_resumes_to_the_same_tables(evaluated, pipelines, s3_bucket, monkeypatch):
    """OUT in a bucket (moto's S3 server; the storage calls are those tests/test_storage.py runs on GCS's
    stand-in too), through the code path of a real one: a run stopped after its third image, run again,
    makes only what is missing and ends with the local run's scores and tables; the report is there."""
    from bdpo_jax import storage

    output = f"s3://{s3_bucket}/eval"
    saved = []

    def stop_after_three(image, path):
        save_image(image, path)
        saved.append(path)
        if len(saved) == 3:
            raise KeyboardInterrupt

    save_image = evaluate.save_image
    with monkeypatch.context() as patch:
        patch.setattr(evaluate, "save_image", stop_after_three)
        with pytest.raises(KeyboardInterrupt):
            evaluate.run(make_config(output, pipelines))
    assert len(storage.list_names(storage.join(output, "images", "shapes", "base"))) == 3
    counter = Counter(monkeypatch)
    results = evaluate.run(make_config(output, pipelines))
    assert sum(counter.images.values()) == 12 - 2  # the batch of 2 images with its third left unmade is made again
    local = read_rows(evaluated["output"] / "scores.parquet", pipelines)
    assert read_rows(pa.BufferReader(storage.read_bytes(results.scores))) == local
    assert results.tables == evaluated["first"].tables
    report = set(storage.list_names(storage.join(output, "report")))
    assert report == {"grid-shapes.png", "shapes.html", "win_rates-shapes.png"}
    assert "../images/shapes/trained/" in storage.read_text(results.pages["shapes"])
    assert Image.open(io.BytesIO(storage.read_bytes(results.grids["shapes"]))).size[0] > 0
