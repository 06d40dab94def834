"""The error boundary every command ends through (bdpo_jax/errors.py, #24): a user's mistake, a full or
read-only disk and a signal end with one line and exit 2 (128 + the signal), a bug keeps its traceback."""

import errno
import logging
import re
import shutil
import signal

import pytest
from command_line import one_error_line, run_command

from bdpo_jax import errors

# What orbax raised on this machine when a checkpoint filled a 5 MiB tmpfs (async save, step 4 of the tiny run).
ORBAX_DISK_FULL = (
    'RESOURCE_EXHAUSTED: Error writing local file "/ckpt/run/checkpoints/4.orbax-checkpoint-tmp/'
    'default.orbax-checkpoint-tmp/_sharding": Failed writing: "/ckpt/run/checkpoints/4.orbax-checkpoint-tmp/'
    'default.orbax-checkpoint-tmp/_sharding.__lock": Failed to write 255165 bytes to file 4: No space left on '
    "device [os_error_code='28']"
)


def ended(error, capsys, monkeypatch, debug=False):
    """(exit status, stderr) of a command whose main raises ``error``."""
    monkeypatch.setenv(errors.DEBUG_VARIABLE, "1" if debug else "0")

    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exit_:
        errors.main_with_clear_errors(main)([])
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "error, status, line",
    [
        (errors.UserError("cache x is damaged\nsecond line"), 2, "error: cache x is damaged; second line"),
        (errors.Interrupted(518, signal.SIGINT), 130, "stopped by SIGINT after step 518, saved it; run the same"),
        (errors.Interrupted(3, signal.SIGTERM), 143, "stopped by SIGTERM after step 3, saved it; run the same"),
        (KeyboardInterrupt(), 130, "stopped by SIGINT; run the same command again: finished work is kept"),
        (OSError(errno.ENOSPC, "No space left on device", "/out/shards/.00001.tmp"), 2,
         "error: No space left on device under /out/shards/.00001.tmp: free space or choose another place"),
        (ValueError(ORBAX_DISK_FULL), 2, "error: No space left on device under /ckpt/run/checkpoints/4.orbax-"),
        (shutil.Error([("/base/vae/x", "/out/.x.tmp/vae/x", "[Errno 28] No space left on device: '/base/vae/x'")]),
         2, "error: No space left on device under /out/.x.tmp/vae/x"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/cache"), 2,
         "error: /mnt/ro/cache is on a read-only file system: choose a writable place"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/out"), 2, "error: permission denied on /data/out"),
    ],
)  # fmt: skip
def test_what_a_user_can_act_on_is_one_line(error, status, line, capsys, monkeypatch):
    code, stderr = ended(error, capsys, monkeypatch)
    assert code == status and stderr.startswith(line) and stderr.count("\n") == 1, stderr


@pytest.mark.parametrize(
    "error",
    [KeyError("params"), PermissionError(errno.EACCES, "Permission denied"), ValueError("shapes (3,) and (4,)")],
)
def test_a_bug_keeps_its_traceback(error, capsys, monkeypatch):
    """A plain error of the code, and a permission error that names no path: not disguised as the user's."""
    monkeypatch.setenv(errors.DEBUG_VARIABLE, "0")

    def main(argv):
        raise error

    with pytest.raises(type(error)):
        errors.main_with_clear_errors(main)([])


def test_debugging_shows_the_traceback_with_the_same_status(capsys, monkeypatch):
    code, stderr = ended(errors.UserError("bad input"), capsys, monkeypatch, debug=True)
    assert code == 2 and "Traceback" in stderr and stderr.endswith("error: bad input\n")


def test_libraries_error_logs_keep_their_first_line(monkeypatch):
    """orbax logs a traceback per array of a checkpoint that a full disk stopped (and asyncio one per task)."""
    import io

    monkeypatch.setenv(errors.DEBUG_VARIABLE, "0")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)

    def main(argv):
        try:
            raise ValueError(ORBAX_DISK_FULL)
        except ValueError:
            logging.getLogger("orbax").exception("_SignalingThread.run() raised an exception")
            logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)

    try:
        errors.main_with_clear_errors(main)([])
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue() == "_SignalingThread.run() raised an exception\n"


def config_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


COMMANDS = {
    "bdpo_jax.train": ("configs/train/tiny.py", "--config.train.betta=1", "--workdir={tmp_path}"),
    "scorers_torch.preprocess": ("configs/preprocess/paper.py:sd15", "--config.shard_sise=10"),
    "scorers_torch.evaluate": ("configs/evaluate/tiny.py", "--config.sampler.num_inferenc_steps=2"),
}


@pytest.mark.parametrize("module", COMMANDS)
def test_config_problems_end_every_command_in_one_line(module, tmp_path, capfd):
    """Before anything loads: an override of a key the config lacks, a file without get_config, a file
    that does not exist or does not parse, a variant get_config refuses, a flag that does not exist."""
    config, override, *rest = COMMANDS[module]
    rest = [arg.format(tmp_path=tmp_path) for arg in rest]
    no_get_config = config_file(tmp_path, "no_get.py", "import ml_collections\n\ndef config():\n    return 1\n")
    not_python = config_file(tmp_path, "broken.py", "def get_config(:\n")
    misspelt = config_file(
        tmp_path,
        "misspelt.py",
        "import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict({'beta': 1})\n"
        "    c.lock()\n    c.betta = 2\n    return c\n",
    )
    cases = [
        ([config, override], rf"{override}: the config has no key '.*' \(Did you mean .*\); use one of its keys"),
        ([no_get_config], rf"--config={no_get_config}: the file defines no get_config\(\)"),
        ([tmp_path / "nothere.py"], r"nothere.py: cannot load the config file \(\[Errno 2\] No such file"),
        ([tmp_path / "nothere.py", override], r"nothere.py: cannot load the config file \(\[Errno 2\] No such file"),
        ([not_python], r"broken.py, line 1: invalid syntax: correct the config file"),
        ([misspelt], r'misspelt.py, line 6: Key "betta" does not exist .* \(Did you mean "beta" .*: correct'),
        ([f"{config.split(':')[0]}:nosuchvariant", *rest], r"--config=.*:nosuchvariant: \w"),
        ([config, "--nosuchflag=1"], r"Unknown command line flag 'nosuchflag' \(--helpshort lists the flags\)"),
    ]
    for (config_arg, *more), message in cases:
        assert run_command(module, f"--config={config_arg}", *more, *rest) == 2, message
        assert re.search(message, one_error_line(capfd.readouterr().err)), message


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path):
    buggy = config_file(tmp_path, "buggy.py", "def get_config():\n    return undefined_name\n")
    with pytest.raises(NameError):
        run_command("scorers_torch.evaluate", f"--config={buggy}")


def test_export_flags_end_in_one_line(capfd):
    assert run_command("bdpo_jax.export", "--out=x") == 2
    assert "Flag --workdir must have a value other than None" in one_error_line(capfd.readouterr().err)


def test_every_command_ends_through_the_boundary():
    """A command added without it would show its user a traceback: absl commands end with errors.run(main)
    (the command line included), others with main_with_clear_errors(main)()."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    found = []
    for package in ("bdpo_jax", "scorers_torch", "launch", "world"):
        for path in sorted((root / package).rglob("*.py")):
            main = re.search(r'^if __name__ == "__main__":.*', path.read_text(), re.MULTILINE | re.DOTALL)
            if main is None:
                continue
            name, block = path.relative_to(root).as_posix(), main[0]
            found.append(name)
            argparse_command = "main_with_clear_errors(main)()" in block and "app.run" not in block
            through = re.search(r"errors\.run\(main[,)]", block) is not None or argparse_command
            assert through, (
                f"{name}: end its __main__ with errors.run(main) (or, not absl: main_with_clear_errors(main)())"
            )
    assert {"bdpo_jax/train.py", "bdpo_jax/export.py", "scorers_torch/preprocess.py", "launch/local.py"} <= set(found)
