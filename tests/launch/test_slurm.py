"""launch.slurm's scripts submitted to a real one-node SLURM cluster on
localhost (tests/launch/slurm_cluster.py): training with two tasks that find
each other through jax's SLURM detection, and preprocessing as a job array.
Skipped, with the reason, where SLURM is not installed or this is not root.
"""

import subprocess
import sys

import numpy as np
import pytest
import slurm_cluster
from run_fixtures import STEPS, assert_same_run, override_flags
from slurm_cluster import one_node_cluster, why_not

from bdpo_jax import cache as cache_format
from launch.local import free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    with one_node_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def test_without_slurm_it_says_why(monkeypatch):
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)
    assert "SLURM is not installed" in why_not() and "apt-get install slurm-wlm munge" in why_not()


def submit(cluster, tmp_path, job_options, job_args):
    """``python -m launch.slurm ... --wait``; returns the job's output."""
    launcher = [sys.executable, "-m", "launch.slurm", *job_options, "--wait"]
    launcher += ["--output", str(tmp_path / "slurm-%j.out"), "--script", str(tmp_path / "job.sbatch")]
    done = subprocess.run([*launcher, "--", *job_args], env=cluster, capture_output=True, text=True, timeout=1500)
    output = "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("slurm-*.out")))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{output[-5000:]}"
    return output


def test_two_tasks_train_as_one_process(cluster, tiny_cache, reference_run, tmp_path):
    workdir = tmp_path / "run"
    options = ["train", "--cpu-devices", "2", "--tasks-per-node", "2", "--port", str(free_port())]
    train = ["--config", "configs/train/tiny.py", "--workdir", str(workdir), *override_flags(tiny_cache)]
    output = submit(cluster, tmp_path, options, train)
    assert f"step {STEPS}/{STEPS}" in output
    assert_same_run(workdir, reference_run)


def test_preprocessing_array_makes_the_same_cache(cluster, tiny_cache, tmp_path):
    """Two array tasks, worker 0 and 1 of 2, write the cache one process wrote."""
    out = tmp_path / "cache"
    job = ["--config", "configs/preprocess/tiny.py", f"--config.source={tiny_cache.parent / 'pairs.parquet'}"]
    job += [f"--config.base_model={tiny_cache.parent / 'pipeline'}", f"--config.output_dir={out}"]
    submit(cluster, tmp_path, ["preprocess", "--array", "2", "--cpu"], [*job, "--config.shard_size=16"])
    manifest, expected = cache_format.read_manifest(out), cache_format.read_manifest(tiny_cache)
    assert manifest["counts"] == expected["counts"] and len(manifest["shards"]) == len(expected["shards"]) == 3
    for i in range(len(manifest["shards"])):
        got, want = cache_format.load_shard(out, i), cache_format.load_shard(tiny_cache, i)
        assert got.keys() == want.keys()
        assert got.pop("captions") == want.pop("captions")
        for key in want:
            np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-3, err_msg=key)
