"""Checkpoints and the run's guards: a run stopped by a signal or a crash, or
whose latest checkpoint is damaged, and run again, ends with the parameters of
an uninterrupted run (tests/conftest.py's ``reference_run``), bit for bit, and
logs every step once. A workdir holds one run at a time, with one config; a
non-finite step stops the run before it is saved."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from command_line import one_error_line, run_command
from run_fixtures import RUN, STEPS, leaves, logged_steps, run_config, saved_params, saved_steps
from train_fixtures import with_step_hook

from bdpo_jax import checkpoints
from bdpo_jax import train as train_module
from bdpo_jax import workdir as workdir_module


def send_at(step_to_signal, signum):
    def hook(step, batch):
        if step == step_to_signal:
            os.kill(os.getpid(), signum)
        return batch

    return hook


def crash_at(step_to_crash):
    def hook(step, batch):
        if step == step_to_crash:
            raise RuntimeError("simulated crash")
        return batch

    return hook


def test_signals_and_a_crash_then_resume_bit_exact(tiny_cache, reference_run, tmp_path, monkeypatch):
    """Ctrl-C, then a crash: each run saves what it can; the last one ends where an uninterrupted run does, bit
    for bit, with every step logged once (SIGTERM: the gs:// workdir's test below)."""
    config = run_config(tiny_cache)
    _, expected = reference_run
    handler = signal.getsignal(signal.SIGINT)  # Python's; ignored where the suite runs in a background job
    with_step_hook(monkeypatch, send_at(0, signal.SIGINT))
    with pytest.raises(checkpoints.Interrupted) as stopped:
        train_module.train(config, tmp_path)
    assert (stopped.value.step, stopped.value.signum) == (1, signal.SIGINT)  # finished the step in flight, saved it
    assert saved_steps(tmp_path) == [1]
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    with_step_hook(monkeypatch, crash_at(3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_module.train(config, tmp_path)
    assert saved_steps(tmp_path) == [1, 2]
    assert not (tmp_path / workdir_module.LOCK_NAME).exists()  # released on the way out
    monkeypatch.undo()
    resumed = train_module.train(config, tmp_path)
    assert int(resumed.step) == STEPS
    for a, b in zip(leaves(resumed.params), leaves(expected.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert logged_steps(tmp_path) == [1, 2, 3, 4]


def test_damaged_latest_checkpoint_resumes_from_the_newest_intact(tiny_cache, reference_run, tmp_path, capsys):
    """A flipped byte in step 4's checkpoint: the run sets it aside, naming it, resumes from step 2 and ends
    bit-exact; the metrics of steps 3 and 4 are logged once, not twice."""
    source, _ = reference_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    files = [p for p in (workdir / "checkpoints" / "4").rglob("*") if p.is_file()]
    damaged = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(data)
    train_module.train(run_config(tiny_cache), workdir)
    assert "checkpoint of step 4 is damaged" in capsys.readouterr().out
    assert saved_steps(workdir) == [2, 4] and list((workdir / "checkpoints").glob("damaged-4-*"))
    assert logged_steps(workdir) == [1, 2, 3, 4]
    for a, b in zip(saved_params(workdir), saved_params(source), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nonfinite_step_stops_the_run_and_keeps_the_last_finite_checkpoint(tiny_cache, tmp_path, monkeypatch):
    def poison(step, batch):
        if step == 2:  # the third step
            return {k: v * jnp.nan if jnp.issubdtype(v.dtype, jnp.floating) else v for k, v in batch.items()}
        return batch

    with_step_hook(monkeypatch, poison)
    with pytest.raises(train_module.NonFiniteError, match="not finite at step 3; the last checkpoint, step 2, is kept"):
        train_module.train(run_config(tiny_cache), tmp_path)
    assert saved_steps(tmp_path) == [2]


def test_metrics_and_kept_checkpoints(reference_run):
    workdir, _ = reference_run
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for key in ("loss", "implicit_accuracy", "reward_margin", "grad_norm", "learning_rate", "label_balance"):
        assert all(np.isfinite(line[key]) for line in lines), key
    for key in ("mse_policy_winner", "mse_policy_loser", "mse_reference_winner", "mse_reference_loser"):
        assert key in lines[0]
    assert all(line["tflops_per_s_per_device"] > 0 and line["pairs_per_s"] > 0 for line in lines)
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert saved_steps(workdir) == [2, 4]
    for step in (2, 4):
        assert checkpoints.damage(workdir / "checkpoints" / str(step)) is None
        assert (workdir / "checkpoints" / str(step) / checkpoints.CHECKSUM_NAME).is_file()


@pytest.mark.parametrize("key", ["keep", "every"])
def test_checkpoint_keep_and_every_below_one_are_config_errors(tiny_cache, key):
    from bdpo_jax.trainer import ConfigError, check

    config = run_config(tiny_cache)
    config.checkpoint[key] = 0
    with pytest.raises(ConfigError, match=f"checkpoint.{key} 0 must be at least 1"):
        check(config)


def test_a_second_run_in_a_workdir_is_refused_naming_the_holder(tiny_cache, tmp_path):
    holder = {"host": "node-7", "pid": 4242, "since": "2026-01-01 00:00:00"}
    (tmp_path / workdir_module.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(workdir_module.WorkdirError, match="in use by another run: process 4242 on host node-7"):
        train_module.train(run_config(tiny_cache), tmp_path)
    assert json.loads((tmp_path / workdir_module.LOCK_NAME).read_text()) == holder  # left to its holder


def test_a_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (tmp_path / workdir_module.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": ended.pid}))
    lock = Path(workdir_module.acquire_lock(tmp_path))
    assert f"taking over the lock of process {ended.pid}" in caplog.text
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    workdir_module.release_lock(lock)
    assert not lock.exists()


def test_a_resumed_run_refuses_a_config_that_changes_its_data_or_model(tiny_cache, tmp_path):
    config = run_config(tiny_cache)
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)  # a run that saved step 2
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    changed = run_config(tiny_cache)
    changed.train.seed, changed.train.global_batch, changed.train.steps = 1, 8, 10
    with pytest.raises(workdir_module.ConfigChangedError) as error:
        train_module.train(changed, tmp_path)
    message = str(error.value)
    assert "train.global_batch: 4 -> 8" in message and "train.seed: 0 -> 1" in message
    assert "train.steps" not in message and "--allow_config_change" in message
    assert json.loads((tmp_path / "config.json").read_text())["train"]["seed"] == 0  # not overwritten

    longer = run_config(tiny_cache)
    longer.train.steps = 10  # only how long: allowed, and recorded
    workdir_module.check_resumed_config(tmp_path, longer, 2, allow_changes=False)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 10
    workdir_module.check_resumed_config(tmp_path, changed, 2, allow_changes=True)  # asked for: the old one is kept
    assert json.loads((tmp_path / "config.before-step-2.json").read_text())["train"]["steps"] == 10
    assert json.loads((tmp_path / "config.json").read_text())["train"]["seed"] == 1

    saved = config.to_dict()
    del saved["optimizer"]["decay"]  # a run saved before the key existed trained at a constant rate
    (tmp_path / "config.json").write_text(json.dumps(saved))
    workdir_module.check_resumed_config(tmp_path, longer, 2, allow_changes=False)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cosine = run_config(tiny_cache)
    cosine.optimizer.decay = "cosine"  # but not a run saved before the key was made to decay
    with pytest.raises(workdir_module.ConfigChangedError, match=r"optimizer\.decay: 'constant' -> 'cosine'"):
        workdir_module.check_resumed_config(tmp_path, cosine, 2, allow_changes=False)
    cosine = run_config(tiny_cache)
    cosine.optimizer.decay = "cosine"
    (tmp_path / "config.json").write_text(cosine.to_json_best_effort())
    cosine.train.steps = 10  # under a decay: the rate would jump at the resumed step
    with pytest.raises(workdir_module.ConfigChangedError, match=r"train\.steps: 4 -> 10"):
        workdir_module.check_resumed_config(tmp_path, cosine, 2, allow_changes=False)


def test_export_loads_in_diffusers_and_generates(reference_run, tmp_path):
    import torch
    from diffusers import DiffusionPipeline
    from flax import nnx

    from bdpo_jax.export import ExportError, export_is_current, export_pipeline
    from bdpo_jax.models import UNetConfig, abstract_unet, diffusers_state_dict

    workdir, state = reference_run
    base = Path(json.loads((workdir / "base_model.json").read_text())["unet"]).parent
    foreign = tmp_path / ".exported.tmp"  # not export's: it must survive
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert not export_is_current(workdir, tmp_path / "exported")
    out = export_pipeline(workdir, base, tmp_path / "exported")
    assert (foreign / "keep.txt").read_text() == "mine"
    assert export_is_current(workdir, out)
    pipeline = DiffusionPipeline.from_pretrained(out)

    _, abstract = abstract_unet(UNetConfig.from_json_file(base / "unet" / "config.json"))
    nnx.replace_by_pure_dict(abstract, jax.device_get(state.params))
    trained = diffusers_state_dict(abstract)
    exported = {k: v.numpy() for k, v in pipeline.unet.state_dict().items()}
    assert exported.keys() == trained.keys()
    for key, value in trained.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    generator = torch.manual_seed(0)
    images = pipeline("a red circle", num_inference_steps=2, height=64, width=64, output_type="np", generator=generator)
    assert images.images.shape == (1, 64, 64, 3) and np.isfinite(images.images).all()
    with pytest.raises(ExportError, match="exists: export writes a new directory"):
        export_pipeline(workdir, base, out)
    with pytest.raises(ExportError, match=r"no checkpoint of step 3 .*there are \[2, 4\]: give --step one of them"):
        export_pipeline(workdir, base, tmp_path / "other", step=3)


def test_export_refuses_a_base_the_run_was_not_trained_from(reference_run, tmp_path):
    from bdpo_jax.export import BaseMismatchError, export_pipeline

    workdir, _ = reference_run
    base = Path(json.loads((workdir / "base_model.json").read_text())["unet"]).parent
    other = tmp_path / "other-base"
    shutil.copytree(base, other)
    unet_config = json.loads((other / "unet" / "config.json").read_text())
    unet_config["cross_attention_dim"] *= 2  # other shapes
    (other / "unet" / "config.json").write_text(json.dumps(unet_config))
    with pytest.raises(BaseMismatchError, match="shapes"):
        export_pipeline(workdir, other, tmp_path / "out")
    shutil.copy(base / "unet" / "config.json", other / "unet" / "config.json")  # same shapes, other weights
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(data)
    with pytest.raises(BaseMismatchError, match=r"is not the base model the run in .* was trained from"):
        export_pipeline(workdir, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line(tiny_cache, tmp_path, capfd):
    """``python -m bdpo_jax.train``'s __main__, flags and boundary, in this process (a new interpreter costs
    its imports; the launch tests start the command in new ones)."""
    base = ["bdpo_jax.train", "--config", "configs/train/tiny.py", f"--workdir={tmp_path}"]
    args = [f"--config.cache={tiny_cache}", "--config.train.global_batch=4", "--config.train.steps=2"]
    # The reference run's T (a constant of the step): its compiled step, not one more compile; checkpoints
    # are saved asynchronously, as the tiny config says (the other runs here save synchronously).
    args.append(f"--config.train.ref_refresh_every={RUN['train.ref_refresh_every']}")
    assert run_command(*base, *args) == 0, capfd.readouterr().err[-3000:]
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert "step 2/2" in capfd.readouterr().out
    assert run_command(*base, *args, "--config.train.betta=1") == 2  # refused before anything loads
    assert "no key 'betta' (Did you mean \"beta\"" in one_error_line(capfd.readouterr().err)
    assert run_command(*base[:-1], f"--workdir={tmp_path / 'new'}") == 2
    assert "cache is not set: --config.cache=" in one_error_line(capfd.readouterr().err)
    assert run_command(*base[:-1], f"--workdir={tiny_cache / 'manifest.json' / 'run'}", *args) == 2
    assert "choose a writable --workdir" in one_error_line(capfd.readouterr().err)


def test_checkpoints_go_only_where_orbax_writes():
    for workdir in ("/runs/a", "runs/a", "gs://bucket/runs/a", "file:///runs/a"):
        assert checkpoints.checkpoint_location_problem(workdir) is None, workdir
    with pytest.raises(checkpoints.CheckpointLocationError, match=r"workdir s3://b/run: orbax .* not s3://"):
        checkpoints.check_checkpoint_location("s3://b/run")
    assert "memory://" in checkpoints.checkpoint_location_problem("memory://run")


def test_a_run_in_a_gcs_workdir_resumes_and_exports(tiny_cache, reference_run, gcs_bucket, monkeypatch):
    """A gs:// workdir on the GCS stand-in, through the code path of a real bucket: the lock, the config and
    base records, metrics, TensorBoard events and orbax checkpoints go into the bucket; a held lock refuses a
    second run; a run stopped by SIGTERM resumes there and ends with the uninterrupted run's parameters, bit for
    bit, every step logged once; export reads its checkpoint; a changed object is found by the checksum record."""
    from bdpo_jax import storage

    with pytest.raises(checkpoints.CheckpointLocationError, match=r"not s3://; .* mount the bucket"):  # before it loads
        train_module.train(run_config(tiny_cache), "s3://bucket/run")
    workdir = f"gs://{gcs_bucket}/run"
    lock = storage.join(workdir, workdir_module.LOCK_NAME)
    storage.write_json(lock, {"host": "node-7", "pid": 4242})
    with pytest.raises(workdir_module.WorkdirError, match="in use by another run: process 4242 on host node-7"):
        train_module.train(run_config(tiny_cache), workdir)
    storage.remove(lock)
    with monkeypatch.context() as patch:
        with_step_hook(patch, send_at(1, signal.SIGTERM))
        with pytest.raises(checkpoints.Interrupted) as stopped:
            train_module.train(run_config(tiny_cache), workdir)
    assert (stopped.value.step, stopped.value.signum) == (2, signal.SIGTERM)  # finished the step in flight, saved it
    assert sorted(checkpoints.step_dirs(storage.join(workdir, "checkpoints"))) == [2]
    assert not storage.exists(lock)  # released
    state = train_module.train(run_config(tiny_cache), workdir)
    _, expected = reference_run
    for a, b in zip(leaves(state.params), leaves(expected.params), strict=True):
        np.testing.assert_array_equal(a, b)
    lines = storage.read_text(storage.join(workdir, "metrics.jsonl")).splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    names = storage.list_names(workdir)
    assert {"base_model.json", "checkpoints", "config.json", "metrics.jsonl", "tensorboard"} <= set(names), names
    assert any(n.startswith("events.out.tfevents") for n in storage.list_names(storage.join(workdir, "tensorboard")))
    for a, b in zip(saved_params(workdir), leaves(expected.params), strict=True):  # what export reads
        np.testing.assert_array_equal(a, b)
    step_dir = checkpoints.step_dirs(storage.join(workdir, "checkpoints"))[STEPS]
    assert checkpoints.damage(step_dir) is None
    storage.write_bytes(storage.join(step_dir, "_CHECKPOINT_METADATA"), b"{}")
    assert "1 file(s) differ from their checksum (_CHECKPOINT_METADATA)" in checkpoints.damage(step_dir)
