"""The train state and one optimisation step of BalancedDPO, as pure functions.

All state is one pytree: policy parameters (fp32), reference parameters (in
``StepConfig.ref_dtype``), optimizer state, step and RNG. With LoRA the policy
and reference parameters are adapters, and the UNet's own weights are the
``base``: an argument of the step, frozen, shared by policy and reference, and
not part of the state (so neither optimizer nor checkpoint holds it). Full
fine-tuning has an empty base.

The policy and the reference predict in one computation: one forward vmapped
over their parameters stacked in the compute dtype. Two forwards compiled apart
(one inside the gradient, one outside) round differently, and beta (5000)
multiplies the difference: the implicit reward would not be zero where policy ==
reference. The gradient is the policy's alone, by one of two backward passes
(``StepConfig.reference_backward``): "recompute" runs the policy's forward
again inside the backward (x1.25 the FLOPs of two separate forwards, no
activations kept from the stacked forward); "residuals" keeps the policy's slice
of the stacked forward's residuals (the FLOPs of two forwards, and on TPU more
than twice the memory: ``bench/RESULTS.md``). The reference refresh is a functional
replacement of ``ref_params`` inside the step, every ``ref_refresh_every`` steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bdpo_jax import objective
from bdpo_jax.labels import LabelSource, pair_label, pair_signs
from bdpo_jax.schedule import NoiseSchedule


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken, and the data position
    params: dict
    ref_params: dict
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key, so that checkpoints hold plain arrays


REFERENCE_BACKWARDS = ("recompute", "residuals")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    schedule: NoiseSchedule
    label_source: LabelSource = dataclasses.field(default_factory=LabelSource)
    objective: str = "dpo"  # or "sft"
    beta: float = 5000.0
    ref_refresh_every: int = 100  # 0: the reference stays the base model (plain Diffusion-DPO)
    grad_accum: int = 1
    sdxl_time_ids: tuple[float, ...] | None = None  # original size, crop, target size
    compute_dtype: str = "float32"  # the UNet's compute dtype (ModelOptions.dtype)
    ref_dtype: str = "float32"  # the reference parameters' dtype; the compute dtype keeps margins exact
    stacked_reference: bool = True  # False: two separate forwards (measured against in bench/reference_forward.py)
    reference_backward: str = "recompute"  # or "residuals": the stacked forward's backward (module docstring)


def init_state(params: dict, optimizer: optax.GradientTransformation, seed: int, ref_dtype: str) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ref_params=jax.tree.map(lambda p: p.astype(ref_dtype), params),
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
    )


def to_compute(batch: dict) -> dict:
    """The cache's fp16 arrays in fp32, cast on the device (the host sends half the bytes)."""
    return {k: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v for k, v in batch.items()}


def unet_inputs(batch: dict, noisy: jax.Array, t: jax.Array, cfg: StepConfig) -> dict:
    """Both images of every pair in one batch, [x0 of all pairs; x1 of all pairs],
    or one image per pair (SFT's winners): the pairs' conditioning repeated to match."""
    copies = noisy.shape[0] // t.shape[0]
    repeat = lambda a: jnp.concatenate([a] * copies)  # noqa: E731
    inputs = {"sample": noisy, "timesteps": repeat(t), "encoder_hidden_states": repeat(batch["text_states"])}
    if cfg.sdxl_time_ids is not None:
        inputs["text_embeds"] = repeat(batch["pooled"])
        inputs["time_ids"] = jnp.broadcast_to(jnp.asarray(cfg.sdxl_time_ids, jnp.float32), (noisy.shape[0], 6))
    return inputs


def predict(
    params: dict, ref_params: dict, base: dict, inputs: dict, graphdef: nnx.GraphDef, cfg: StepConfig
) -> tuple[jax.Array, jax.Array]:
    """The policy's and the reference's predictions; the reference's carries no gradient."""
    ref_params, base = jax.lax.stop_gradient((ref_params, base))
    if not cfg.stacked_reference:
        prediction = _merge(graphdef, params, base)(**inputs)
        return prediction, jax.lax.stop_gradient(_merge(graphdef, ref_params, base)(**inputs))
    keep_residuals = cfg.reference_backward == "residuals"
    prediction, ref_prediction = _predict_stacked(
        params, ref_params, base, inputs, graphdef, cfg.compute_dtype, keep_residuals
    )
    return prediction, jax.lax.stop_gradient(ref_prediction)


def _merge(graphdef: nnx.GraphDef, params: dict, base: dict) -> nnx.Module:
    return nnx.merge(graphdef, params, base) if base else nnx.merge(graphdef, params)


def _forward(params: dict, base: dict, inputs: dict, graphdef: nnx.GraphDef, dtype: str) -> jax.Array:
    # The parameters in the compute dtype, the dtype every layer casts them to anyway.
    cast = functools.partial(jax.tree.map, lambda p: p.astype(dtype))
    return _merge(graphdef, cast(params), cast(base))(**inputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _predict_stacked(params, ref_params, base, inputs, graphdef, dtype, keep_residuals):
    """One forward vmapped over [policy, reference], so that both round alike;
    the base (LoRA) is shared, not stacked. Its gradient is the policy's alone:
    autodiff of the vmapped forward would also run the reference's backward (on
    zeros) and keep its activations. The backward either recomputes the policy's
    forward or, ``keep_residuals``, runs on the policy's slice of the vmapped
    forward's residuals."""
    both = jax.vmap(lambda p: _forward(p, base, inputs, graphdef, dtype))(_stack(params, ref_params, dtype))
    return both[0], both[1]


def _stack(params, ref_params, dtype):
    return jax.tree.map(lambda p, r: jnp.stack([p.astype(dtype), r.astype(dtype)]), params, ref_params)


def _predict_stacked_fwd(params, ref_params, base, inputs, graphdef, dtype, keep_residuals):
    if not keep_residuals:
        predictions = _predict_stacked(params, ref_params, base, inputs, graphdef, dtype, keep_residuals)
        return predictions, (None, params, ref_params, base, inputs)
    pullback = lambda p: jax.vjp(lambda q: _forward(q, base, inputs, graphdef, dtype), p)  # noqa: E731
    both, pullbacks = jax.vmap(pullback)(_stack(params, ref_params, dtype))
    policy_pullback = jax.tree.map(lambda residual: residual[0], pullbacks)
    return (both[0], both[1]), (policy_pullback, params, ref_params, base, inputs)


def _predict_stacked_bwd(graphdef, dtype, keep_residuals, residuals, cotangents):
    policy_pullback, params, ref_params, base, inputs = residuals
    if policy_pullback is None:
        _, policy_pullback = jax.vjp(lambda p: _forward(p, base, inputs, graphdef, dtype), params)
    # With kept residuals the gradient is the stacked (compute-dtype) parameters': the cast's transpose.
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), policy_pullback(cotangents[0])[0], params)
    zeros = functools.partial(jax.tree.map, jnp.zeros_like)
    return grads, zeros(ref_params), zeros(base), zeros(inputs)


_predict_stacked.defvjp(_predict_stacked_fwd, _predict_stacked_bwd)


def loss_and_metrics(
    params: dict,
    ref_params: dict,
    batch: dict,
    noise: jax.Array,
    t: jax.Array,
    signs: jax.Array,
    weights: jax.Array,
    decided: jax.Array,
    graphdef: nnx.GraphDef,
    cfg: StepConfig,
    base: dict | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of one (micro)batch of pairs, with shared noise and timestep per
    pair; ``decided``: how many decided pairs the loss's mean divides by;
    ``base``: LoRA's frozen weights (``params`` are then adapters)."""
    n = noise.shape[0]
    x = jnp.concatenate([batch["latents_0"], batch["latents_1"]])
    noisy, target = cfg.schedule.noisy_and_target(x, jnp.concatenate([noise, noise]), jnp.concatenate([t, t]))
    prediction, ref_prediction = predict(
        params, ref_params, base or {}, unet_inputs(batch, noisy, t, cfg), graphdef, cfg
    )
    mse_pol = objective.per_sample_mse(prediction, target)
    mse_ref = objective.per_sample_mse(ref_prediction, target)
    pol, ref = (mse_pol[:n], mse_pol[n:]), (mse_ref[:n], mse_ref[n:])
    loss, metrics = objective.loss_and_metrics(cfg.objective, pol, ref, signs, weights, cfg.beta, decided)
    winner_first = pair_label(signs, weights) >= 0
    for name, (m0, m1) in (("policy", pol), ("reference", ref)):
        metrics[f"mse_{name}_winner"] = jnp.where(winner_first, m0, m1).mean()
        metrics[f"mse_{name}_loser"] = jnp.where(winner_first, m1, m0).mean()
    return loss, metrics | {"loss": loss}


def sft_loss_and_metrics(
    params: dict,
    ref_params: dict,
    batch: dict,
    noise: jax.Array,
    t: jax.Array,
    signs: jax.Array,
    weights: jax.Array,
    decided: jax.Array,
    graphdef: nnx.GraphDef,
    cfg: StepConfig,
    base: dict | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SFT objective's training loss, as ``loss_and_metrics`` gives it, at a
    third of the compute: it needs neither the reference nor the losers, so one
    forward of the policy on each pair's winner."""
    del ref_params
    labels = pair_label(signs, weights)
    winner_first = (labels >= 0).reshape(-1, *[1] * (noise.ndim - 1))
    x = jnp.where(winner_first, batch["latents_0"], batch["latents_1"])
    noisy, target = cfg.schedule.noisy_and_target(x, noise, t)
    prediction = _forward(params, base or {}, unet_inputs(batch, noisy, t, cfg), graphdef, cfg.compute_dtype)
    mse_winner = objective.per_sample_mse(prediction, target)
    loss = objective.sft_loss(mse_winner, labels, decided)
    return loss, {"loss": loss, "mse_policy_winner": mse_winner.mean()}  # over all pairs, as the full path's


def draw(rng: jax.Array, batch: dict, cfg: StepConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One noise draw and one timestep per pair (shared by its two images), and the pairs' signs and weights."""
    noise_rng, time_rng, label_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, batch["latents_0"].shape, jnp.float32)
    t = jax.random.randint(time_rng, (noise.shape[0],), 0, cfg.schedule.num_timesteps)
    return noise, t, *pair_signs(batch, cfg.label_source, label_rng)


def train_step(
    state: TrainState,
    batch: dict,
    base: dict | None = None,
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    cfg: StepConfig,
    learning_rate: Callable[[jax.Array], jax.Array],
    constrain_micro: Callable[[Any], Any] = lambda tree: tree,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step over the global batch, in ``grad_accum`` micro-batches;
    ``base``: the frozen UNet weights the parameters (adapters) are added to."""
    batch = to_compute(batch)
    pairs = batch["latents_0"].shape[0]
    # Drawn for the whole batch at once, so that accumulation does not change them.
    noise, t, signs, weights = draw(jax.random.fold_in(state.rng, state.step), batch, cfg)
    # Each micro-batch's loss divides by the whole batch's decided pairs (over accum), so
    # that the mean of the micro-batches' gradients is the gradient of the batch's mean.
    decided = objective.decided_pairs(signs) / cfg.grad_accum

    accum = cfg.grad_accum
    if pairs % accum:
        raise ValueError(f"{pairs} pairs per step do not split into {accum} micro-batches")

    def micro(tree):  # (pairs, ...) -> (accum, pairs / accum, ...), each device keeping its rows
        return constrain_micro(
            jax.tree.map(lambda a: a.reshape(pairs // accum, accum, *a.shape[1:]).swapaxes(0, 1), tree)
        )

    grad_fn = jax.value_and_grad(sft_loss_and_metrics if cfg.objective == "sft" else loss_and_metrics, has_aux=True)

    def accumulate(grads, xs):
        micro_batch, micro_noise, micro_t, micro_signs = xs
        (_, metrics), g = grad_fn(
            state.params,
            state.ref_params,
            micro_batch,
            micro_noise,
            micro_t,
            micro_signs,
            weights,
            decided,
            graphdef,
            cfg,
            base,
        )
        return jax.tree.map(jnp.add, grads, g), metrics

    if accum == 1:  # no scan: XLA's CPU backend ran a length-1 scan 4x slower (measured)
        grads, metrics = accumulate(jax.tree.map(jnp.zeros_like, state.params), (batch, noise, t, signs))
        metrics = jax.tree.map(lambda m: m[None], metrics)
    else:
        grads, metrics = jax.lax.scan(
            accumulate, jax.tree.map(jnp.zeros_like, state.params), micro((batch, noise, t, signs))
        )
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(lambda m: m.mean(axis=0), metrics)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    refresh = (cfg.ref_refresh_every > 0) & (step % max(cfg.ref_refresh_every, 1) == 0)
    ref_params = jax.lax.cond(
        refresh, lambda: jax.tree.map(lambda p: p.astype(cfg.ref_dtype), params), lambda: state.ref_params
    )
    metrics |= {
        "grad_norm": optax.global_norm(grads),
        "learning_rate": learning_rate(state.step),
        "ref_refreshed": refresh,
    }
    new_state = state.replace(step=step, params=params, ref_params=ref_params, opt_state=opt_state)
    return new_state, metrics
