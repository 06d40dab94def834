"""``python -m bdpo_jax.export`` against a hostile user (#24): every mistake one line naming the flag and
the fix, exit 2, nothing written; Ctrl-C exits 130 and leaves no half export; an empty step folder is
skipped; a killed export's hidden folder is removed by the next export (a dead process's only)."""

import errno
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from command_line import one_error_line, run_command

from bdpo_jax import storage


def test_export_command_line(reference_run, tmp_path, capfd, monkeypatch):
    workdir, _ = reference_run
    base = Path(json.loads((workdir / "base_model.json").read_text())["unet"]).parent
    out = tmp_path / "out"

    def refused(message, workdir=workdir, base=base, out=out, step=None):
        more = [f"--step={step}"] if step is not None else []
        assert run_command("bdpo_jax.export", f"--workdir={workdir}", f"--base={base}", f"--out={out}", *more) == 2
        line = one_error_line(capfd.readouterr().err)
        assert re.search(message, line), line

    refused(r"no checkpoint of step 3 in .*checkpoints; there are \[2, 4\]: give --step one of them", step=3)
    refused(r"--workdir .*no does not exist: give the work directory of a bdpo_jax.train run", tmp_path / "no")
    refused(r"has no checkpoints/ folder: give --workdir the work directory of a train run", tmp_path)
    (tmp_path / "new-run" / "checkpoints").mkdir(parents=True)
    refused(r"checkpoints holds no finished checkpoint: export once the run has saved one", tmp_path / "new-run")
    refused(r"--base .*nb does not exist: give the base pipeline the run was trained from", base=tmp_path / "nb")
    no_unet = tmp_path / "no-unet"
    no_unet.mkdir()
    (no_unet / "model_index.json").write_text("{}")
    refused(r"--base .*no-unet: .*holds neither config.json .* nor unet/config.json", base=no_unet)
    refused(r"--out .*checkpoints exists: export writes a new directory", out=workdir / "checkpoints")
    refused(r"--out .*base_model.json exists", out=workdir / "base_model.json")
    refused(r"--out .*base_model.json/new is under a file", out=workdir / "base_model.json" / "new")
    assert not out.exists()
    read_only, mkdir = tmp_path / "read-only", Path.mkdir

    def mkdir_on_a_read_only_disk(path, *args, **kwargs):
        if path.parent == read_only:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return mkdir(path, *args, **kwargs)

    read_only.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(Path, "mkdir", mkdir_on_a_read_only_disk)
        refused(r"cannot write in .*read-only \(Read-only file system\): give --out a place", out=read_only / "o")

    # A copy of the run with an empty step folder above its checkpoints, and the hidden folders of a killed
    # export (its process is gone) and of a running one (this process).
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    (run / "checkpoints" / "6").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed, running = tmp_path / f".out.tmp-{storage.HOST}-{dead.pid}-1", tmp_path / storage.temporary_name("other")
    for folder in (killed, running):
        (folder / "unet").mkdir(parents=True)
    with monkeypatch.context() as patch:

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        patch.setattr("bdpo_jax.models.save_unet", interrupted)  # where the command's __main__ imports it from
        assert run_command("bdpo_jax.export", f"--workdir={run}", f"--base={base}", f"--out={out}") == 130
    assert "stopped by SIGINT; run the same command again" in capfd.readouterr().err
    assert not killed.exists() and running.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == []  # its own removed
    assert run_command("bdpo_jax.export", f"--workdir={run}", f"--base={base}", f"--out={out}") == 0
    assert json.loads((out / "bdpo_export.json").read_text())["step"] == 4  # step 6 is an empty folder
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
