"""The train step compiled ahead of time for a TPU slice and a GPU on this CPU
(``bdpo_jax.plan``): the tiny config on the micro UNet, so that a change that
breaks either compile fails here. Each compile takes about a minute on a
loaded 2-core machine (the TPU and GPU compilers generate every kernel); one
per target, shared by its tests."""

import importlib.util
import os

import jax
import pytest

from bdpo_jax import plan as plan_module
from bdpo_jax import targets, trainer
from bdpo_jax.models import UNetConfig
from bdpo_jax.models.presets import unet_preset
from configs.train import tiny

MICRO = UNetConfig.from_diffusers(unet_preset("micro-sd1"))


def compiler_or_skip(platform: str) -> None:
    """.ci/run installs the compilers (the plan-tpu and plan-gpu extras): there a missing one fails; elsewhere
    it skips."""
    module, extra = targets.EXTRAS[platform]
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed: pip install -e '.[{extra}]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def compile_tiny(target_name: str, chips: int, **model):
    compiler_or_skip(targets.get_target(target_name).platform)
    target = targets.get_target(target_name)
    target = targets.Target(**{**target.__dict__, "chips": chips})
    config = tiny.get_config()
    config.model.update(model)
    config = plan_module.plan_config(config, target, pairs_per_chip=1, remat=None)
    return plan_module.compile_plan(plan_module.Request(config, target, targets.devices(target, chips), MICRO))


@pytest.fixture(scope="module")
def tpu_plan():
    """Two v5e chips, FSDP: the splash kernel runs on each chip's share of the batch."""
    return compile_tiny("v5e-8", 2)


@pytest.fixture(scope="module")
def gpu_plan():
    return compile_tiny("h100", 1, dtype="bfloat16")  # cuDNN attention needs half precision


def test_tpu_compile_fits_and_runs_splash_attention(tpu_plan):
    assert tpu_plan.fits and tpu_plan.device_kind == "TPU v5 lite" and tpu_plan.chips == 2
    assert tpu_plan.total == sum(tpu_plan.__dict__[k] for k in ("arguments", "outputs", "temporaries")) - (
        tpu_plan.aliased
    )
    assert tpu_plan.custom_calls.get("tpu_custom_call", 0) > 0, tpu_plan.custom_calls  # the Pallas kernel
    assert "splash" in tpu_plan.attention and tpu_plan.pallas_flops > 0
    assert tpu_plan.flops > 0 and 0 < tpu_plan.estimated_seconds < tpu_plan.step_seconds
    # MFU's count leaves out the stacked reference's recomputed policy forward (x1.25 on the UNet's FLOPs)
    assert 1.15 < (tpu_plan.flops + tpu_plan.pallas_flops) / tpu_plan.model_flops < 1.4
    assert tpu_plan.mfu < tpu_plan.hfu
    assert tpu_plan.collectives.get("all-gather", 0) > 0  # FSDP gathers the parameters


def test_gpu_compile_fits_and_runs_cudnn_attention_for_odd_text_lengths(gpu_plan):
    assert gpu_plan.fits and gpu_plan.device_kind == "NVIDIA H100 80GB HBM3"
    fused = [name for name in gpu_plan.custom_calls if "cudnn$fmha" in name]
    assert fused, gpu_plan.custom_calls  # self- and 77-token cross-attention, forward and backward
    assert gpu_plan.attention == "cudnn" and gpu_plan.estimated_seconds is None  # XLA has no GPU time estimate


def test_a_missing_compiler_is_an_error_naming_its_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(targets.TargetError, match=r"pip install -e '\.\[plan-tpu\]'"):
        targets.devices(targets.get_target("v5p-8"))
    with pytest.raises(targets.TargetError, match="target 'v9-8'"):
        targets.get_target("v9-8")


def test_planning_needs_no_cache_and_still_reports_every_problem():
    config = tiny.get_config()
    run = trainer.check(config, jax.devices()[:1], MICRO)
    assert run.manifest is None and run.unet_dir is None
    batch = run.abstract_batch()
    assert batch["latents_0"].shape == (config.train.global_batch, 16, 16, 4)
    assert batch["text_states"].shape == (config.train.global_batch, 77, 32)
    config.train.objective = "ppo"
    config.mesh.data = 3
    config.model.attention = "cudnn"
    with pytest.raises(trainer.ConfigError) as error:
        trainer.check(config, jax.devices(), MICRO)
    message = str(error.value)
    assert "train.objective 'ppo'" in message and "mesh data x fsdp" in message and "cache is not set" not in message
    assert message.count("model.attention: cuDNN attention needs a GPU") == 1, message  # on these CPU devices


def test_collective_bytes_are_read_from_the_compiled_program():
    hlo = """
  %all-gather.1 = bf16[4,320]{1,0} all-gather(bf16[1,320]{1,0} %p), replica_groups={{0,1,2,3}}, dimensions={0}
  %ars = (f32[8]{0}, f32[2,2]{1,0}) all-reduce-start(f32[8]{0} %a, f32[2,2]{1,0} %b), to_apply=%add
  %ard = (f32[8]{0}, f32[2,2]{1,0}) all-reduce-done((f32[8]{0}, f32[2,2]{1,0}) %ars)
  %x = f32[10]{0} add(f32[10]{0} %y, f32[10]{0} %z)
"""
    assert plan_module.collective_bytes(hlo) == {"all-gather": 2 * 4 * 320, "all-reduce": 4 * 8 + 4 * 4}


def test_fit_finds_the_largest_batch_per_remat_policy():
    """Doubling pairs per chip until a compile does not fit; the next policy only where the
    last did not reach the config's batch, from above the last's largest (fake compiles: what
    fits is a rule here)."""
    limit = {"none": 2, "save_dots": 4, "full": 32}
    tried = []

    def make_plan(pairs, remat):
        tried.append((pairs, remat))
        return plan_module.Plan(
            target="t", device_kind="k", chips=1, pairs_per_chip=pairs, grad_accum=1, remat=remat,
            attention="xla", state={}, batch=0, arguments=0, outputs=0, aliased=0, temporaries=0,
            chip_memory=1, fits=pairs <= limit[remat], compile_seconds=0.0,
        )  # fmt: skip

    best = plan_module.fit(make_plan, wanted=16, report=lambda line: None)
    assert [(p.remat, p.pairs_per_chip) for p in best] == [("none", 2), ("save_dots", 4), ("full", 16)]
    steps = [(1, "none"), (2, "none"), (4, "none"), (4, "save_dots"), (8, "save_dots"), (8, "full"), (16, "full")]
    assert tried == steps


def test_memory_only_child_is_this_command_line_as_one_compile():
    argv = ["plan.py", "--config", "c.py:sd15", "--memory_only", "--fit", "--json", "out.json", "--pairs_per_chip=2"]
    argv += ["--config.model.remat", "full", "--target=h100", "--config.train.beta=10"]
    command = plan_module.child_command(argv, 4, "save_dots")
    assert command[1:] == [
        "-m", "bdpo_jax.plan", "--config", "c.py:sd15", "--target=h100", "--config.train.beta=10",
        "--pairs_per_chip=4", "--config.model.remat=save_dots",
    ]  # fmt: skip
