"""What every launcher shares: the job command lines, their environment, and
printing or running them.

A launcher's own options come before ``--``; everything after it is passed to
the job unchanged (``--config configs/train/paper.py:sd15 --workdir ...
--config.cache=...``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The command-line modules of the three jobs (DESIGN.md's diagram).
JOB_MODULES = {
    "train": "bdpo_jax.train",
    "preprocess": "scorers_torch.preprocess",
    "evaluate": "scorers_torch.evaluate",
}
DISTRIBUTED_FLAG = "--config.distributed=True"


def split_job_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(launcher arguments, job arguments) at the first ``--``."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def check_job_args(parser: argparse.ArgumentParser, job: str, job_args: Sequence[str]) -> None:
    """The job arguments name a config; the launcher alone decides how processes join."""
    if not any(a == "--config" or a.startswith("--config=") for a in job_args):
        parser.error(f"give the {job} job's arguments after '--', e.g. -- --config configs/{job}/...py ...")
    if any(a.startswith("--config.distributed") for a in job_args):
        parser.error("leave out --config.distributed: the launcher sets it")
    if job == "train" and not any(a == "--workdir" or a.startswith("--workdir=") for a in job_args):
        parser.error("give the train job a --workdir after '--'")


def module_command(job: str, job_args: Sequence[str], python: str = "python") -> list[str]:
    """``python -m <the job's module> ARGS``; multi-process training joins through jax.distributed."""
    command = [python, "-m", JOB_MODULES[job], *job_args]
    return [*command, DISTRIBUTED_FLAG] if job == "train" else command


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_environment(devices_per_process: int) -> dict[str, str]:
    """JAX on CPU with ``devices_per_process`` host devices (tests, CPU clusters). The XLA flags
    set where the launcher runs (a dump folder, an optimisation level) are kept, but for the
    device count."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] != DEVICE_COUNT_FLAG]
    return {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join([f"{DEVICE_COUNT_FLAG}={devices_per_process}", *kept])}


def env_pair(text: str) -> tuple[str, str]:
    """An ``--env KEY=VALUE`` option (argparse ``type=``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def export_lines(env: Mapping[str, str]) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in env.items()]


def shell_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """One line a shell runs as given: ``KEY=VALUE ... argv``."""
    prefix = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
    return " ".join([*prefix, shlex.join(argv)])


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print exactly what would run, run nothing")
    parser.add_argument(
        "--env", action="append", type=env_pair, default=[], metavar="KEY=VALUE", help="set in every process"
    )


def run_commands(commands: Sequence[Sequence[str]], dry_run: bool) -> int:
    """Prints each command line; runs them one after another unless ``dry_run``."""
    for argv in commands:
        print(shell_line(argv), flush=True)
        if not dry_run:
            code = subprocess.run(list(argv)).returncode
            if code:
                return code
    return 0


def python_executable() -> str:
    """This interpreter: on a shared file system, the same environment on every node."""
    return sys.executable or "python3"
