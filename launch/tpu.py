"""A TPU pod: the same command on every worker of a TPU VM slice, or a GKE
workload through xpk.

    python -m launch.tpu setup --tpu my-v5p-64 --zone us-east5-a          # this checkout + jax[tpu] on every worker
    python -m launch.tpu train --tpu my-v5p-64 --zone us-east5-a -- \\
        --config configs/train/paper.py:sd15 --workdir gs://bucket/run1 --config.cache=/mnt/disks/cache/sd15
    python -m launch.tpu logs --tpu my-v5p-64 --zone us-east5-a          # the last lines of every worker's log
    python -m launch.tpu xpk --cluster my-gke --workload bdpo-run1 --tpu-type v5p-64 -- --config ...

Every subcommand prints the gcloud (or xpk) command lines it runs; ``--dry-run``
prints them only. On a TPU VM, ``jax.distributed.initialize()`` finds the
other workers from the TPU metadata, so every worker runs the same command.
Worker output goes to ``~/bdpo-logs/train.log`` on each worker (and, unless
``--detach``, to this terminal through gcloud). ``stop`` sends SIGTERM to a
detached run: the trainer saves a checkpoint before it exits.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from bdpo_jax.errors import main_with_clear_errors
from launch import common

ARCHIVE = "/tmp/bdpo-checkout.tar.gz"
LOG_DIR = "~/bdpo-logs"
INSTALL = "pip install -q -U pip && pip install -q -e '.[jax]' 'jax[tpu]'"


def gcloud_tpu(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}", "--worker=all"]
    return [*command, f"--project={args.project}"] if args.project else command


def on_every_worker(args: argparse.Namespace, remote: str) -> list[str]:
    return gcloud_tpu(args, "ssh", args.tpu, "--command", remote)


def remote_train(args: argparse.Namespace, job_args: Sequence[str]) -> str:
    """The shell line every worker runs: environment, the train command, its log."""
    env = dict(args.env)
    train = shlex.join(common.module_command("train", job_args, ".venv/bin/python"))
    log = f"{LOG_DIR}/train.log"
    if args.detach:
        run = f"nohup {train} > {log} 2>&1 < /dev/null & echo $! > {LOG_DIR}/train.pid"
    else:
        run = f"{train} 2>&1 | tee {log}"
    return "; ".join(
        ["set -eo pipefail", f"mkdir -p {LOG_DIR}", f"cd {args.remote_dir}", *common.export_lines(env), run]
    )


def commands(args: argparse.Namespace, job_args: Sequence[str]) -> list[list[str]]:
    if args.verb == "setup":
        files = "git ls-files -z --cached --others --exclude-standard"
        pack = f"cd {shlex.quote(str(common.REPO))} && {files} | tar czf {ARCHIVE} --null -T -"
        unpack = (
            f"mkdir -p {args.remote_dir} && tar xzf ~/bdpo.tar.gz -C {args.remote_dir} && cd {args.remote_dir} && "
            f"python3 -m venv .venv && . .venv/bin/activate && {INSTALL}"
        )
        return [
            ["bash", "-c", pack],
            gcloud_tpu(args, "scp", ARCHIVE, f"{args.tpu}:~/bdpo.tar.gz"),
            on_every_worker(args, unpack),
        ]
    if args.verb == "stage":
        source, dest = shlex.quote(args.source), shlex.quote(args.dest)
        copy = f"mkdir -p {dest} && gcloud storage rsync --recursive {source} {dest}"
        return [on_every_worker(args, copy)]
    if args.verb == "train":
        return [on_every_worker(args, remote_train(args, job_args))]
    if args.verb == "logs":
        return [on_every_worker(args, f'tail -n {args.lines} {LOG_DIR}/train.log | sed "s/^/$(hostname): /"')]
    if args.verb == "stop":
        return [on_every_worker(args, f"kill -TERM $(cat {LOG_DIR}/train.pid)")]
    if args.verb == "xpk":
        train = shlex.join(common.module_command("train", job_args, "python"))
        env = " ".join(common.export_lines(dict(args.env)))
        if args.docker_image:
            image, inner = ["--docker-image", args.docker_image], train
        else:  # xpk builds an image of this checkout on top of the base image
            image = ["--base-docker-image", args.base_docker_image, "--script-dir", str(common.REPO)]
            inner = f"{INSTALL} && {train}"
        create = ["xpk", "workload", "create", "--cluster", args.cluster, "--workload", args.workload]
        create += ["--tpu-type", args.tpu_type, "--num-slices", str(args.num_slices), *image]
        for flag in ("project", "zone"):
            if getattr(args, flag):
                create += [f"--{flag}", getattr(args, flag)]
        return [[*create, "--command", f"{env + '; ' if env else ''}{inner}"]]
    raise AssertionError(args.verb)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True)
    helps = {
        "setup": "copy this checkout to every worker and install it with jax[tpu]",
        "stage": "copy a cache from a bucket to every worker's disk",
        "train": "run the train command on every worker (train arguments after '--')",
        "logs": "print the last lines of every worker's log",
        "stop": "SIGTERM a detached run on every worker (it saves a checkpoint first)",
    }
    for verb, text in helps.items():
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("--tpu", required=True, help="TPU VM name")
        sub.add_argument("--zone", required=True)
        sub.add_argument("--project")
        sub.add_argument("--remote-dir", default="~/bdpo", help="the checkout on each worker")
        common.add_common_options(sub)
        if verb == "stage":
            sub.add_argument("--source", required=True, help="gs://bucket/path of the cache")
            sub.add_argument("--dest", required=True, help="local directory on every worker")
        if verb == "train":
            sub.add_argument("--detach", action="store_true", help="run under nohup and return at once")
        if verb == "logs":
            sub.add_argument("--lines", type=int, default=20)
    sub = verbs.add_parser("xpk", help="a GKE workload through xpk (train arguments after '--')")
    sub.add_argument("--cluster", required=True)
    sub.add_argument("--workload", required=True)
    sub.add_argument("--tpu-type", required=True, help="e.g. v5p-64")
    sub.add_argument("--num-slices", type=int, default=1)
    sub.add_argument("--docker-image", help="an image with this project installed")
    sub.add_argument("--base-docker-image", default="python:3.11", help="else: install on top of this image")
    sub.add_argument("--project")
    sub.add_argument("--zone")
    common.add_common_options(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    own, job_args = common.split_job_args(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(own)
    if args.verb in ("train", "xpk"):
        common.check_job_args(p, "train", job_args)
    elif job_args:
        p.error(f"'{args.verb}' takes no job arguments after '--'")
    return common.run_commands(commands(args, job_args), args.dry_run)


if __name__ == "__main__":
    sys.exit(main_with_clear_errors(main)())
