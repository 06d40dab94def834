"""launch.local: a SIGTERM to one of two processes stops both at one step,
saved; run again, they resume and end where the one-process run ends.

The two launches are the suite's only multi-process training (besides the
SLURM test): each starts two interpreters, so they are one test. Bit-exact
resume is checked in one process (tests/train/test_checkpoint.py); here the
resumed two-process run is held to the one-process run's losses and weights.

Each launch compiles the step in process 1 (about a minute): JAX writes its
compile cache from process 0 only, and on CPU the two processes' cache keys
differ (in the hash of the devices' topology), so process 1 never finds
process 0's entry.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from run_fixtures import STEPS, assert_same_run, logged_steps, override_flags, saved_steps

INTERRUPTED_EXIT = 128 + signal.SIGTERM


def child_pids(parent: int) -> dict[int, str]:
    """{pid: command line} of the children of ``parent`` (Linux /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                children[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (ValueError, OSError, IndexError):
            continue
    return children


def launch_local(cache, workdir: Path, sigterm_process_1: bool = False) -> tuple[int, list[str]]:
    """``python -m launch.local --processes 2 --cpu-devices 2 -- <train>``: its exit code and both logs.

    ``sigterm_process_1``: once process 0 has printed its plan (no step has
    run), process 1 alone gets SIGTERM."""
    logs = workdir.with_name(workdir.name + "-logs")
    launcher = [sys.executable, "-m", "launch.local", "--processes", "2", "--cpu-devices", "2", "--log-dir", str(logs)]
    train = ["--config", "configs/train/tiny.py", "--workdir", str(workdir), *override_flags(cache)]
    with subprocess.Popen([*launcher, "--", *train], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        if sigterm_process_1:
            deadline = time.monotonic() + 600
            while p.poll() is None and time.monotonic() < deadline:
                log_0 = logs / "process_0.log"
                if log_0.is_file() and "steps    0 -> " in log_0.read_text():
                    (pid,) = [pid for pid, cmd in child_pids(p.pid).items() if "--process-id 1 " in cmd]
                    os.kill(pid, signal.SIGTERM)
                    break
                time.sleep(0.05)
        output, _ = p.communicate(timeout=900)
    process_logs = [(logs / f"process_{i}.log").read_text() for i in range(2)]
    assert "--process-id 1" in output  # it printed what it ran
    return p.returncode, process_logs


def test_two_local_processes_stop_together_on_sigterm_and_resume_to_the_one_process_run(
    tiny_cache, reference_run, tmp_path
):
    workdir = tmp_path / "run"
    code, logs = launch_local(tiny_cache, workdir, sigterm_process_1=True)
    assert code == INTERRUPTED_EXIT, "\n".join(log[-3000:] for log in logs)  # a scheduler requeues it
    assert "devices  4 x cpu on 2 process(es)" in logs[0]
    stopped = saved_steps(workdir)[-1]
    assert 1 <= stopped < STEPS, stopped
    for i, log in enumerate(logs):  # each process saved the step they agreed on, and no later one
        assert f"process {i}: stopped by SIGTERM after step {stopped}, saved it" in log, log[-3000:]

    code, logs = launch_local(tiny_cache, workdir)
    assert code == 0, "\n".join(log[-3000:] for log in logs)
    assert f"steps    {stopped} -> {STEPS} (resumed" in logs[0] and f"step {STEPS}/{STEPS}" in logs[0]
    assert logged_steps(workdir) == list(range(1, STEPS + 1))  # every step once
    assert_same_run(workdir, reference_run)


def test_a_failing_process_stops_the_others(tmp_path):
    """Process 1 fails; process 0 (which would wait for it forever) is stopped, and its code is returned."""
    from launch.local import launch

    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    start = time.monotonic()
    assert launch([(sleeper, {}), (failing, {})], tmp_path / "logs") == 3
    assert time.monotonic() - start < 60
