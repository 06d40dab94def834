"""A trained UNet back to diffusers: a full pipeline directory, the base
pipeline's with its ``unet/`` replaced (a LoRA run's adapters merged into the
base's kernels), or a LoRA run's adapters alone.

    python -m bdpo_jax.export --workdir /ckpt/run1 --base /models/sd15 --out /models/sd15-balanced-dpo [--step 2000]
    python -m bdpo_jax.export --workdir /ckpt/lora1 --adapters --out /models/sd15-bdpo-lora

A pipeline loads with diffusers' pipeline classes (``DiffusionPipeline.from_pretrained(out)``).
The base must be the one the run was trained from (the workdir's
``base_model.json`` records it); ``OUT/bdpo_export.json`` records which step
of which run the export holds, so that a newer step is exported again.
Adapters are written as ``out/pytorch_lora_weights.safetensors`` for
``pipeline.load_lora_weights(out)``, with the recorded base in its metadata.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
from absl import flags, logging
from flax import nnx

from bdpo_jax import checkpoints, errors, storage
from bdpo_jax.errors import UserError
from bdpo_jax.models import UNetConfig, abstract_unet, load_params, save_unet
from bdpo_jax.models.lora import LoRASpec
from bdpo_jax.models.lora_weights import adapted_paths, merge_adapters, save_lora_weights
from bdpo_jax.models.unet_files import find_unet_dir, weight_files
from bdpo_jax.workdir import EXPORT_RECORD_NAME, base_fingerprint, recorded_base_model


class ExportError(UserError):
    """The workdir, step, base pipeline or output directory given to export cannot be used."""


class BaseMismatchError(ExportError):
    """The base pipeline given to export is not the one the run trained."""


def finished_steps(workdir: str) -> list[int]:
    """The steps of a workdir's finished checkpoints. An empty step folder is none (orbax writes a step
    elsewhere and moves it into place whole): skipped, as the trainer sets it aside."""
    steps = checkpoints.step_dirs(storage.join(workdir, "checkpoints"))
    empty = sorted(step for step, path in steps.items() if not storage.list_names(path))
    for step in empty:
        logging.warning("%s is an empty folder, not a checkpoint: skipped", steps[step])
    return sorted(set(steps) - set(empty))


def saved_steps(workdir: str) -> list[int]:
    """``finished_steps``, or an ``ExportError`` saying why there are none."""
    if not storage.exists(workdir):
        raise ExportError(f"--workdir {workdir} does not exist: give the work directory of a bdpo_jax.train run")
    directory = storage.join(workdir, "checkpoints")
    if not storage.exists(directory):
        raise ExportError(f"{workdir} has no checkpoints/ folder: give --workdir the work directory of a train run")
    steps = finished_steps(workdir)
    if not steps:
        raise ExportError(f"{directory} holds no finished checkpoint: export once the run has saved one")
    return steps


def restore_params(workdir: str | Path, step: int | None = None) -> tuple[dict, int]:
    """The policy parameters of a checkpoint (the latest by default), on the host: read alone, without the
    optimizer's moments and the reference (a full fine-tuning run's parameters are about a quarter of its
    checkpoint; the tests' micro UNet, 4-step run: 1.5-1.6 s against 2.2-2.5 s for the whole state, side by side
    on a 2-core CPU)."""
    import orbax.checkpoint as ocp

    workdir = storage.absolute(workdir)
    steps = saved_steps(workdir)
    directory = storage.join(workdir, "checkpoints")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ExportError(f"no checkpoint of step {step} in {directory}; there are {steps}: give --step one of them")
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    try:
        saved = manager.item_metadata(step)["params"]
        target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), saved)}
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        restored = manager.restore(step, args=ocp.args.PyTreeRestore(target, restore_args, partial_restore=True))
    except Exception as e:  # orbax and tensorstore raise many kinds on a broken file
        why = checkpoints.damage(storage.join(directory, str(step))) or f"{type(e).__name__}: {str(e)[:300]}"
        raise checkpoints.CheckpointError(
            f"the checkpoint of step {step} in {directory} cannot be read ({why}); export another with --step "
            f"(there are {steps}), or run the training again there: it sets damaged checkpoints aside"
        ) from e
    finally:
        manager.close()
    return restored["params"], step


def shapes(tree: dict) -> dict[str, tuple]:
    """{"down_blocks.0.resnets.0.conv1.kernel": shape} (checkpoints key lists by strings, nnx by ints)."""
    return {
        ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def check_base(workdir: str, unet_dir: Path, abstract_params: dict, params: dict) -> None:
    """The base's UNet has the trained parameters' shapes, and is the base the run recorded."""
    want, have = shapes(abstract_params), shapes(params)
    differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if differ:
        shown = "; ".join(f"{k}: base {want.get(k)}, trained {have.get(k)}" for k in differ[:5])
        raise BaseMismatchError(
            f"the base UNet {unet_dir} does not have the trained parameters' shapes ({len(differ)} differ: {shown}); "
            f"give --base the pipeline the run in {workdir} was trained from"
        )
    record = recorded_base_model(workdir)
    if record is not None and record["fingerprint"] != base_fingerprint(unet_dir):
        raise BaseMismatchError(
            f"{unet_dir} is not the base model the run in {workdir} was trained from ({record['unet']}: its "
            f"config or weights differ); give --base that pipeline"
        )


def trained_lora(workdir: str | Path, params: dict) -> LoRASpec | None:
    """The adapters' spec of a LoRA run (from the config.json its workdir holds), None for full fine-tuning."""
    path = storage.join(workdir, "config.json")
    lora = storage.read_json(path).get("lora", {}) if storage.exists(path) else {}
    if lora.get("rank", 0) > 0:
        return LoRASpec.from_names(lora["rank"], lora.get("alpha"), lora["targets"])
    if adapted_paths(params):
        raise ExportError(f"{workdir}'s checkpoint holds LoRA adapters but {path} names no lora.rank: restore it")
    return None


def export_lora(workdir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """A LoRA run's adapters as ``out/pytorch_lora_weights.safetensors``, for
    diffusers' ``load_lora_weights`` on the base pipeline the run trained from."""
    params, step = restore_params(workdir, step)
    lora = trained_lora(workdir, params)
    if lora is None:
        raise ExportError(f"{workdir} is a full fine-tuning run (lora.rank 0): export a pipeline (no --adapters)")
    base = recorded_base_model(workdir)
    path = save_lora_weights(params, lora, out, {"workdir": storage.absolute(workdir), "step": step, "base": base})
    logging.info("exported the adapters of step %d of %s to %s", step, workdir, path)
    return path


def export_pipeline(workdir: str | Path, base: str | Path, out: str | Path, step: int | None = None) -> Path:
    """The base pipeline with the trained UNet, written whole into ``out`` (a new directory) or not at all."""
    workdir, base, out = storage.absolute(workdir), Path(base), Path(out)
    if not (base / "model_index.json").is_file():
        state = "does not exist" if not base.exists() else "is not a diffusers pipeline directory (no model_index.json)"
        raise ExportError(f"--base {base} {state}: give the base pipeline the run was trained from")
    try:
        unet_dir = find_unet_dir(base)
    except FileNotFoundError as e:
        raise ExportError(f"--base {base}: {e} Give the base pipeline the run was trained from") from None
    if out.exists():
        raise ExportError(f"--out {out} exists: export writes a new directory; give another --out, or delete it")
    config = UNetConfig.from_json_file(unet_dir / "config.json")
    tmp = new_temporary(out)
    try:
        params, step = restore_params(workdir, step)
        _, state = abstract_unet(config)
        lora = trained_lora(workdir, params)
        if lora is not None:  # the base's kernels with the adapters merged in
            base_params = nnx.to_pure_dict(load_params(state, weight_files(unet_dir)))
            check_base(workdir, unet_dir, nnx.to_pure_dict(state), base_params)
            params = merge_adapters(base_params, params, lora.scale)
        else:
            check_base(workdir, unet_dir, nnx.to_pure_dict(state), params)
        nnx.replace_by_pure_dict(state, params)  # in place
        shutil.copytree(base, tmp, dirs_exist_ok=True, ignore=lambda d, names: ["unet"] if Path(d) == base else [])
        save_unet(config, state, tmp / "unet")
        (tmp / EXPORT_RECORD_NAME).write_text(json.dumps({"workdir": workdir, "step": step}, indent=2))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info("exported step %d of %s to %s", step, workdir, out)
    return out


def new_temporary(out: Path) -> Path:
    """An empty folder beside ``out`` to write the export in, named as ``storage``'s temporaries are, so
    that the next export removes it if this process dies; those of dead exports are removed now."""
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ExportError(f"--out {out} is under a file, not a folder: give --out a new directory's path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in storage.remove_stale_temporaries(out.parent):
            logging.info("removed %s, left by an export that died", out.parent / name)
        tmp = out.parent / storage.temporary_name(out.name)
        tmp.mkdir()
    except OSError as e:
        raise ExportError(f"cannot write in {out.parent} ({e.strerror}): give --out a place this user can write") from e
    return tmp


def export_is_current(workdir: str | Path, out: str | Path) -> bool:
    """Whether ``out`` is an export of this workdir's latest checkpoint (False: export again)."""
    record = Path(out) / EXPORT_RECORD_NAME
    steps = finished_steps(storage.absolute(workdir))
    if not record.is_file() or not steps:
        return False
    exported = json.loads(record.read_text())
    return exported["workdir"] == storage.absolute(workdir) and exported["step"] >= steps[-1]


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.adapters:
        export_lora(f.workdir, f.out, f.step)
    elif f.base is None:
        raise UserError("--base is required to export a pipeline (the base diffusers pipeline the run started from)")
    else:
        export_pipeline(f.workdir, f.base, f.out, f.step)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "The training workdir.")
    flags.DEFINE_string("base", None, "The base diffusers pipeline directory the run started from.")
    flags.DEFINE_bool("adapters", False, "LoRA runs: the adapters alone, for diffusers' load_lora_weights.")
    flags.DEFINE_string("out", None, "The new pipeline directory.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.mark_flags_as_required(["workdir", "out"])
    errors.run(main)
