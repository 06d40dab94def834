"""What the launchers print with --dry-run is what they run: the lines parse,
the generated shell runs (with a stand-in interpreter where a real run needs a
TPU or GPU cluster), and a launcher refuses job arguments it cannot use."""

import os
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

from launch import local, slurm, tpu

TRAIN = ["--config", "configs/train/paper.py:sd15", "--workdir", "/ckpt/run1", "--config.cache=/cache/sd15"]


def printed(capsys, main, argv) -> list[str]:
    assert main(argv) == 0
    return capsys.readouterr().out.splitlines()


def test_local_prints_one_line_per_process(capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/hlo --xla_force_host_platform_device_count=4")
    lines = printed(capsys, local.main, ["--dry-run", "--processes", "3", "--cpu-devices", "2", "--", *TRAIN])
    assert len(lines) == 3
    argvs = [shlex.split(line) for line in lines]
    flags = "XLA_FLAGS=--xla_force_host_platform_device_count=2 --xla_dump_to=/tmp/hlo"  # the others kept
    assert all(flags in a for a in argvs)
    coordinators = {a[a.index("--coordinator") + 1] for a in argvs}
    assert len(coordinators) == 1 and coordinators.pop().startswith("127.0.0.1:")
    assert [a[a.index("--process-id") + 1] for a in argvs] == ["0", "1", "2"]
    assert all(a[-len(TRAIN) :] == TRAIN for a in argvs)


@pytest.mark.parametrize(
    ("job", "layout"),
    [
        ("train", []),
        ("train", ["--per", "node"]),
        ("preprocess", []),
        ("preprocess", ["--array", "16"]),
        ("evaluate", []),
        ("evaluate", ["--array", "4", "--cpu"]),
    ],
)
def test_slurm_scripts_are_valid_bash(capsys, tmp_path, job, layout):
    args = ["--config", f"configs/{job}/x.py"] + (["--workdir", "/ckpt/run1"] if job == "train" else [])
    out = "\n".join(printed(capsys, slurm.main, [job, "--dry-run", "--nodes", "2", *layout, "--", *args]))
    script = out.split("\n", 1)[1].rsplit("\nsbatch ", 1)[0]
    (tmp_path / "job.sbatch").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)
    assert "#SBATCH --nodes=2" in script or "--array" in layout
    if job == "train":
        assert "srun --kill-on-bad-exit=1" in script and "--config.distributed=True" in script
        per_node = "--per" in layout
        assert ("#SBATCH --ntasks-per-node=1" if per_node else "#SBATCH --ntasks-per-node=8") in script
        assert ("JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in script) == per_node
    elif "--array" in layout:
        n = layout[1]
        assert f"#SBATCH --array=0-{int(n) - 1}" in script
        assert f'--config.worker_index="$SLURM_ARRAY_TASK_ID" --config.num_workers={n}' in script
        assert ("--gres=gpu:1" in script) == ("--cpu" not in layout)
    else:
        assert "torch.distributed.run --nnodes=2 --nproc-per-node=8" in script and "--rdzv-backend=c10d" in script


def test_tpu_setup_packs_this_checkout(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tpu, "ARCHIVE", str(tmp_path / "checkout.tar.gz"))
    pack, scp, install = (
        shlex.split(line) for line in printed(capsys, tpu.main, ["setup", "--dry-run", "--tpu", "t", "--zone", "z"])
    )
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t"] and "--worker=all" in install
    assert "'jax[tpu]'" in install[install.index("--command") + 1]
    subprocess.run(pack, check=True)
    with tarfile.open(tmp_path / "checkout.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"pyproject.toml", "launch/tpu.py", "bdpo_jax/train.py", "configs/train/paper.py"} <= names
    assert not any(n.startswith((".venv/", ".git/")) for n in names)


def remote_command(capsys, argv) -> str:
    (line,) = printed(capsys, tpu.main, argv)
    command = shlex.split(line)
    assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t"] and "--worker=all" in command
    return command[command.index("--command") + 1]


def test_tpu_worker_commands_run(capsys, tmp_path):
    """The line every worker runs, run here in a fake home with a stand-in interpreter."""
    home = tmp_path / "home"
    (home / "bdpo" / ".venv" / "bin").mkdir(parents=True)
    stand_in = home / "bdpo" / ".venv" / "bin" / "python"
    stand_in.write_text('#!/bin/sh\necho "train args: $*"\n[ -n "$SLEEP" ] && exec sleep "$SLEEP"\nexit 0\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "HOME": str(home)}
    where = ["--tpu", "t", "--zone", "z"]
    train = remote_command(capsys, ["train", "--dry-run", *where, "--env", "A=b c", "--", *TRAIN])
    done = subprocess.run(["bash", "-c", train], env=env, capture_output=True, text=True, check=True)
    expected = "train args: -m bdpo_jax.train " + " ".join(TRAIN) + " --config.distributed=True"
    assert done.stdout.strip() == expected
    assert (home / "bdpo-logs" / "train.log").read_text().strip() == expected
    logs = remote_command(capsys, ["logs", "--dry-run", *where, "--lines", "1"])
    done = subprocess.run(["bash", "-c", logs], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith(": " + expected)
    # Detached: returns at once, leaves a pid that stop signals.
    detached = remote_command(capsys, ["train", "--dry-run", "--detach", *where, "--env", "SLEEP=60", "--", *TRAIN])
    subprocess.run(["bash", "-c", detached], env=env, check=True, timeout=30)
    pid = int((home / "bdpo-logs" / "train.pid").read_text())
    os.kill(pid, 0)  # running
    stop = remote_command(capsys, ["stop", "--dry-run", *where])
    subprocess.run(["bash", "-c", stop], env=env, check=True)
    for _ in range(50):
        try:
            os.waitpid(pid, os.WNOHANG)
            os.kill(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            break
        time.sleep(0.1)
    else:
        pytest.fail("stop did not end the detached run")


def test_xpk_workload(capsys):
    (line,) = printed(
        capsys,
        tpu.main,
        ["xpk", "--dry-run", "--cluster", "c", "--workload", "w", "--tpu-type", "v5p-64", "--", *TRAIN],
    )
    command = shlex.split(line)
    assert command[:3] == ["xpk", "workload", "create"]
    assert command[command.index("--tpu-type") + 1] == "v5p-64" and "--base-docker-image" in command
    inner = command[command.index("--command") + 1]
    assert "jax[tpu]" in inner and inner.endswith(
        shlex.join(["python", "-m", "bdpo_jax.train", *TRAIN, "--config.distributed=True"])
    )


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("launch.local", ["--", "--workdir", "w"], "give the train job's arguments"),
        ("launch.local", ["--", "--config", "c"], "--workdir"),
        ("launch.slurm", ["train", "--", *TRAIN, "--config.distributed=False"], "leave out --config.distributed"),
        ("launch.tpu", ["logs", "--tpu", "t", "--zone", "z", "--", "x"], "takes no job arguments"),
    ],
)
def test_bad_arguments_are_refused(module, argv, message):
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr
