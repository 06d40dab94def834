"""The sharded train step: reference refresh, devices, accumulation. (Two
processes against one: tests/launch/test_local.py.)

beta multiplies the difference of per-sample MSEs, so a last-bit difference in
an MSE (summed in another order on four devices) moves the loss by about
beta * 1e-7: MSEs are compared to 1e-6, the loss to 1e-4 at beta = 500.
"""

import math

import jax
import numpy as np
import pytest
from train_fixtures import tiny_train_config

from bdpo_jax.trainer import build_trainer


def run_steps(config, steps, devices):
    trainer = build_trainer(config, devices)
    initial_ref = jax.device_get(trainer.state.ref_params)
    state, history = trainer.state, []
    for step in range(steps):
        state, metrics = trainer.step_fn(state, trainer.global_batch(step))
        history.append((jax.device_get(state), jax.device_get(metrics)))
    return trainer, initial_ref, history


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


@pytest.fixture(scope="module")
def one_device(tiny_cache):
    config = tiny_train_config(tiny_cache, ref_refresh_every=2)
    return config, run_steps(config, 3, jax.devices()[:1])


def test_reference_refreshes_every_t_steps(one_device):
    _, (trainer, base, history) = one_device
    (s1, m1), (s2, m2), (s3, m3) = history
    ref_dtype = trainer.plan.step_config.ref_dtype
    assert same(s1.ref_params, base)  # after step 1: untouched
    assert same(s2.ref_params, jax.tree.map(lambda p: p.astype(ref_dtype), s2.params))  # step 2: the policy's
    assert not same(s2.ref_params, base)
    assert same(s3.ref_params, s2.ref_params)  # step 3: untouched again
    assert not same(s3.params, s2.params)
    assert [bool(m["ref_refreshed"]) for m in (m1, m2, m3)] == [False, True, False]


def test_four_devices_match_one(one_device):
    config, (_, _, one) = one_device
    assert len(jax.devices()) == 4
    trainer, _, four = run_steps(config, 3, jax.devices())
    assert trainer.mesh.shape == {"data": 1, "fsdp": 4}
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(trainer.state_shardings))
    for (state_1, metrics_1), (state_4, metrics_4) in zip(one, four, strict=True):
        for name in ("mse_policy_winner", "mse_policy_loser", "mse_reference_winner", "mse_reference_loser"):
            np.testing.assert_allclose(metrics_4[name], metrics_1[name], rtol=1e-6)
        np.testing.assert_allclose(metrics_4["loss"], metrics_1["loss"], atol=1e-4)
        for a, b in zip(leaves(state_4.params), leaves(state_1.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(leaves(state_4.ref_params), leaves(state_1.ref_params), strict=True):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-5)  # bf16


def test_gradient_accumulation_matches_one_batch(one_device):
    config, (_, _, whole) = one_device
    config = config.copy_and_resolve_references()
    config.train.grad_accum = 2
    _, _, accumulated = run_steps(config, 2, jax.devices()[:1])
    for (state_a, metrics_a), (state_w, metrics_w) in zip(accumulated, whole, strict=False):
        np.testing.assert_allclose(metrics_a["grad_norm"], metrics_w["grad_norm"], rtol=1e-4)
        for a, b in zip(leaves(state_a.params), leaves(state_w.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def assert_zero_margin(metrics, where):
    assert abs(float(metrics["loss"]) - math.log(2)) < 1e-6, (where, float(metrics["loss"]))
    assert float(metrics["implicit_accuracy"]) == 0.5 and float(metrics["reward_margin"]) == 0.0
    assert float(metrics["mse_policy_winner"]) == float(metrics["mse_reference_winner"])
    assert float(metrics["mse_policy_loser"]) == float(metrics["mse_reference_loser"])


def test_policy_equal_to_reference_gives_exactly_zero_margin_in_fp32(one_device):
    """Where policy == reference (step 1, the base as reference; step 3, right after
    the refresh of step 2 to a policy that had moved from the base), the loss is
    log 2 and every pair's implicit reward is exactly 0: both forwards are one
    computation, inside the gradient. (bf16: the test below.)"""
    _, (_, base, history) = one_device
    (_, m1), (s2, _), (_, m3) = history
    assert not same(s2.ref_params, base)
    assert_zero_margin(m1, "step 1")
    assert_zero_margin(m3, "step 3")


@pytest.mark.parametrize("reference_backward", ["recompute", "residuals"])
def test_policy_equal_to_reference_gives_exactly_zero_margin_in_bf16(reference_backward):
    """As above, in bf16 and at the paper's beta, refreshed every step, with either backward pass."""
    import functools

    import jax.numpy as jnp
    import optax
    from flax import nnx

    from bdpo_jax.labels import LabelSource
    from bdpo_jax.models import ModelOptions, UNetConfig
    from bdpo_jax.models.presets import unet_preset
    from bdpo_jax.models.weights import random_unet
    from bdpo_jax.schedule import NoiseSchedule
    from bdpo_jax.step import StepConfig, init_state, train_step
    from bench.dpo_step import synthetic_batch

    dtype = "bfloat16"
    config = UNetConfig.from_diffusers(unet_preset("micro-sd1"))
    graphdef, params = nnx.split(random_unet(config, ModelOptions(dtype=jnp.dtype(dtype))), nnx.Param)
    optimizer = optax.adam(1e-3)
    cfg = StepConfig(
        NoiseSchedule.from_config({"_class_name": "DDPMScheduler"}),
        LabelSource("vote"),
        beta=5000.0,
        ref_refresh_every=1,
        compute_dtype=dtype,
        ref_dtype=dtype,
        reference_backward=reference_backward,
    )
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, cfg=cfg, learning_rate=lambda s: 1e-3)
    )
    state = init_state(nnx.to_pure_dict(params), optimizer, seed=0, ref_dtype=dtype)
    batch = synthetic_batch(config, 6, 16)
    before = jax.device_get(state.params)
    for step_index in range(2):  # step 0: the base model as reference; step 1: right after a refresh
        state, metrics = step(state, batch)
        assert bool(metrics["ref_refreshed"])
        assert_zero_margin(metrics, f"step {step_index}")
    assert not same(state.params, before)  # the refresh replaced a reference that had moved


@pytest.mark.parametrize(("lora", "reference_backward"), [(False, "residuals"), (True, "recompute")])
def test_stacked_forward_gradient_is_the_policys(lora, reference_backward):
    """The stacked forward's gradient (the policy's, from its slice of the stacked forward's
    residuals, or from its forward recomputed) equals that of two separate forwards, in fp32,
    with the reference apart from the policy; with LoRA, the adapters' gradient, the base
    shared by both. And (with LoRA) SFT's training loss (the winners' forward alone,
    differentiated as any forward) equals the full computation's."""
    import dataclasses
    import functools

    import jax.numpy as jnp
    from flax import nnx

    from bdpo_jax.labels import LabelSource, pair_label
    from bdpo_jax.models import ModelOptions, UNetConfig
    from bdpo_jax.models.presets import unet_preset
    from bdpo_jax.models.weights import random_unet
    from bdpo_jax.objective import decided_pairs
    from bdpo_jax.schedule import NoiseSchedule
    from bdpo_jax.step import StepConfig, draw, loss_and_metrics, sft_loss_and_metrics, to_compute
    from bench.dpo_step import synthetic_batch

    config = UNetConfig.from_diffusers(unet_preset("micro-sd1"))
    graphdef, params = nnx.split(random_unet(config, ModelOptions()), nnx.Param)
    params, base = nnx.to_pure_dict(params), None
    if lora:  # random adapters (lora_B nonzero, so that lora_A has a gradient) on the random UNet
        from bdpo_jax.models import abstract_unet
        from bdpo_jax.models.lora import LoRASpec

        graphdef, abstract = abstract_unet(config, ModelOptions(), LoRASpec.from_names(2, 4.0, ("attention",)))
        rng = np.random.default_rng(0)
        adapters = abstract.split(nnx.LoRAParam, ...)[0]
        params, base = (
            nnx.to_pure_dict(jax.tree.map(lambda v: jnp.asarray(rng.normal(0, 0.1, v.shape), jnp.float32), adapters)),
            params,
        )
    ref = jax.tree.map(lambda p: p * 1.01, params)
    # beta 1: at 5000 the two forwards' last-bit differences move sigmoid's slope visibly
    schedule = NoiseSchedule.from_config({"_class_name": "DDPMScheduler"})
    stacked = StepConfig(schedule, LabelSource("vote"), beta=1.0, reference_backward=reference_backward)
    batch = to_compute({k: jnp.asarray(v) for k, v in synthetic_batch(config, 4, 16).items()})
    noise, t, signs, weights = draw(jax.random.key(0), batch, stacked)
    grads = {}
    for name, cfg in (("stacked", stacked), ("separate", dataclasses.replace(stacked, stacked_reference=False))):
        loss = functools.partial(loss_and_metrics, graphdef=graphdef, cfg=cfg)
        gradient = jax.jit(jax.grad(lambda p, *arrays, base: loss(p, *arrays, base=base)[0]))  # noqa: B023
        grads[name] = gradient(params, ref, batch, noise, t, signs, weights, decided_pairs(signs), base=base)
    for a, b in zip(jax.tree.leaves(grads["stacked"]), jax.tree.leaves(grads["separate"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert any(np.abs(a).max() > 0 for a in jax.tree.leaves(grads["stacked"]))

    if not lora:  # SFT's forward is the same with or without a base; checked once (eager forwards are slow)
        return
    sft = dataclasses.replace(stacked, objective="sft")
    args = (batch, noise, t, signs, weights, decided_pairs(signs), graphdef, sft)
    assert 0 < int((pair_label(signs, weights) < 0).sum()) < signs.shape[0]  # winners on both sides
    full, fast = (f(params, ref, *args, base)[0] for f in (loss_and_metrics, sft_loss_and_metrics))
    np.testing.assert_allclose(fast, full, rtol=1e-6)
