"""N training processes on one machine, joined by ``jax.distributed``: for
development, for tests, and for a GPU box run as one process per GPU.

    python -m launch.local --processes 2 --cpu-devices 2 -- \\
        --config configs/train/tiny.py --workdir workdirs/local --config.cache=workdirs/world/pairs/cache

Process i runs ``python -m launch.local --coordinator 127.0.0.1:PORT
--processes N --process-id i -- ARGS``, which calls
``jax.distributed.initialize("127.0.0.1:PORT", N, i)`` and then runs
``bdpo_jax.train`` with ARGS, as the cluster launchers do after jax has found
its peers from SLURM's or the TPU's environment. If one process fails, the
others are stopped (they would wait on it forever); SIGTERM and Ctrl-C are
passed on, so the trainer saves a checkpoint before it exits.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bdpo_jax.errors import main_with_clear_errors
from launch import common


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_commands(args: argparse.Namespace, job_args: Sequence[str]) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, extra environment) of each process."""
    paths = [str(common.REPO), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths if p))}  # this checkout first
    if args.cpu_devices:
        env |= common.cpu_environment(args.cpu_devices)
    env |= dict(args.env)
    coordinator = f"127.0.0.1:{args.port or free_port()}"
    commands = []
    for i in range(args.processes):
        argv = [args.python, "-m", "launch.local", "--coordinator", coordinator]
        argv += ["--processes", str(args.processes), "--process-id", str(i)]
        if args.gpus_per_process:
            argv += ["--gpus-per-process", str(args.gpus_per_process)]
        commands.append(([*argv, "--", *job_args], env))
    return commands


def stop(processes: Sequence[subprocess.Popen], grace_s: float = 60.0) -> None:
    """SIGTERM (the trainer saves and exits), then SIGKILL after ``grace_s``."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in processes:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(commands: Sequence[tuple[list[str], dict[str, str]]], log_dir: Path | None) -> int:
    """Starts every process and waits; the first failure stops the rest."""
    logs = []
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        logs = [open(log_dir / f"process_{i}.log", "w") for i in range(len(commands))]  # noqa: SIM115
    processes = [
        subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=logs[i] if logs else None,
            stderr=subprocess.STDOUT if logs else None,
        )
        for i, (argv, env) in enumerate(commands)
    ]
    previous = {s: signal.signal(s, lambda *_: stop(processes)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = [c for c in codes if c]
            if failed:
                stop(processes)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for f in logs:
            f.close()


def join_and_train(args: argparse.Namespace, job_args: Sequence[str]) -> None:
    """One process: join the others, then run the train command line in this interpreter."""
    import jax

    local_device_ids = None
    if args.gpus_per_process:
        first = args.process_id * args.gpus_per_process
        local_device_ids = list(range(first, first + args.gpus_per_process))
    jax.distributed.initialize(args.coordinator, args.processes, args.process_id, local_device_ids=local_device_ids)
    sys.argv = [common.JOB_MODULES["train"], *job_args]
    runpy.run_module(common.JOB_MODULES["train"], run_name="__main__", alter_sys=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch.local",
        description="Train with N processes on this machine. Train arguments follow '--'.",
    )
    p.add_argument("--processes", type=int, default=2, help="number of processes")
    p.add_argument("--cpu-devices", type=int, default=0, help="run on CPU with this many host devices per process")
    p.add_argument("--gpus-per-process", type=int, default=0, help="GPUs of this box each process takes, in order")
    p.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    p.add_argument("--log-dir", type=Path, help="write process i's output to LOG_DIR/process_i.log")
    p.add_argument("--python", default=common.python_executable(), help="interpreter of every process")
    p.add_argument("--coordinator", help=argparse.SUPPRESS)  # set in the processes this starts
    p.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    common.add_common_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    own, job_args = common.split_job_args(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(own)
    common.check_job_args(p, "train", job_args)
    if args.coordinator is not None:
        join_and_train(args, job_args)
        return 0
    if args.processes < 1:
        p.error("--processes must be at least 1")
    commands = process_commands(args, job_args)
    for argv, env in commands:
        print(common.shell_line(argv, env), flush=True)
    return 0 if args.dry_run else launch(commands, args.log_dir)


if __name__ == "__main__":
    sys.exit(main_with_clear_errors(main)())
