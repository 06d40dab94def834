"""A one-node SLURM cluster on localhost for the tests: munged, slurmctld and
slurmd started in the foreground from a temporary directory, stopped on exit.

Needs Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them) and root
(slurmd runs jobs as their user). ``why_not()`` says why it cannot run here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from launch.local import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "scancel")


def why_not() -> str | None:
    """None if a cluster can be started here, else the reason."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root"
    return None


def slurm_conf(root: Path, cpus: int) -> str:
    """Minimal config: no cgroups, no accounting, one node that runs ``cpus`` tasks at once."""
    return f"""\
ClusterName=bdpotest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1024 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def wait_for(check, what: str, logs: list[Path], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
    raise RuntimeError(f"{what} within {timeout_s:.0f} s\n{tails}")


@contextlib.contextmanager
def one_node_cluster(root: Path, cpus: int = 4) -> Iterator[dict[str, str]]:
    """Starts the daemons; yields the environment in which sbatch talks to them."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    root.chmod(0o755)  # munged refuses directories others can write to
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, cpus))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    commands = {
        "munged": ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.socket"]
        + [f"--{name}-file={root}/munged.{name}" for name in ("pid", "log", "seed")],
        "slurmctld": ["slurmctld", "-D", "-i", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
    }
    logs = [root / f"{name}.log" for name in DAEMONS]
    daemons: list[subprocess.Popen] = []
    try:
        for name in DAEMONS:
            out = open(root / f"{name}.out", "w")  # noqa: SIM115
            daemons.append(subprocess.Popen(commands[name], env=env, stdout=out, stderr=subprocess.STDOUT))
            out.close()
            if name == "munged":
                wait_for(lambda: (root / "munge.socket").exists(), "munged did not start", logs)

        def node_idle() -> bool:
            done = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return done.stdout.strip() in ("idle", "mix")

        wait_for(node_idle, "the node did not become idle", [*logs, *(root / f"{n}.out" for n in DAEMONS)])
        yield env
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
