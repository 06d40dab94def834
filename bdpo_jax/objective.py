"""Diffusion-DPO and the SFT baseline, as pure functions of per-sample MSEs.

For a pair (x0, x1) with shared noise and timestep:

    l_theta = -0.5 * [(mse_pol(x0) - mse_pol(x1)) - (mse_ref(x0) - mse_ref(x1))]
    loss    = -sum_k w_k log sigmoid(beta * s_k * l_theta)

as Wallace et al.'s reference implementation writes it (their scale term
-0.5 * beta). ``bdpo_jax.labels`` gives the signs s_k (+1 when x0 is preferred)
and weights w_k of every label source: one component of weight 1 for all but
the weighted sum of per-scorer losses. A sign of 0 (a kept tie) contributes no
gradient and is left out of the mean, which is over decided pairs (as the
metrics are): a tie would add a constant log 2 and shrink the others' gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bdpo_jax.labels import pair_label

OBJECTIVES = ("dpo", "sft")

MSE = tuple[jax.Array, jax.Array]  # per-sample MSE of image 0 and image 1 of every pair


def per_sample_mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over every axis but the batch, in fp32."""
    error = (prediction.astype(jnp.float32) - target.astype(jnp.float32)) ** 2
    return error.reshape(error.shape[0], -1).mean(axis=1)


def implicit_reward_gap(mse_pol_0: jax.Array, mse_pol_1: jax.Array, mse_ref_0: jax.Array, mse_ref_1: jax.Array):
    """l_theta: how much more the policy (relative to the reference) improved on x0 than on x1."""
    return -0.5 * ((mse_pol_0 - mse_pol_1) - (mse_ref_0 - mse_ref_1))


def preference_metrics(gap: jax.Array, labels: jax.Array, beta: float) -> dict[str, jax.Array]:
    """Implicit accuracy and reward margin over the decided pairs (label != 0)."""
    margin = labels * gap
    decided = labels != 0
    count = jnp.maximum(decided.sum(), 1)
    return {
        # a margin of exactly 0 (policy == reference) counts half, as in diffusers' DPO script
        "implicit_accuracy": (((margin > 0) + 0.5 * (margin == 0)) * decided).sum() / count,
        "reward_margin": beta * (margin * decided).sum() / count,
        "label_balance": (labels > 0).mean(),
    }


def decided_pairs(signs: jax.Array) -> jax.Array:
    """How many pairs have a preference in some component (at least 1, to divide by)."""
    return jnp.maximum((signs != 0).any(axis=1).sum(), 1).astype(jnp.float32)


def dpo_loss(
    mse_pol: MSE,
    mse_ref: MSE,
    signs: jax.Array,
    weights: jax.Array,
    beta: float,
    decided: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-sum_k w_k log sigmoid(beta * s_k * l_theta), summed over the components
    with a sign and averaged over the decided pairs (or divided by ``decided``), and its metrics."""
    gap = implicit_reward_gap(*mse_pol, *mse_ref)
    terms = -weights * jax.nn.log_sigmoid(beta * signs * gap[:, None])
    per_pair = jnp.where(signs != 0, terms, 0.0).sum(axis=1)
    decided = decided_pairs(signs) if decided is None else decided
    return per_pair.sum() / decided, preference_metrics(gap, pair_label(signs, weights), beta)


def sft_loss(mse_winner: jax.Array, labels: jax.Array, decided: jax.Array | None = None) -> jax.Array:
    """Plain diffusion loss on each pair's winner (ties skipped): the SFT baseline."""
    decided = decided_pairs(labels[:, None]) if decided is None else decided
    return (mse_winner * (labels != 0)).sum() / decided


def loss_and_metrics(
    objective: str,
    mse_pol: MSE,
    mse_ref: MSE,
    signs: jax.Array,
    weights: jax.Array,
    beta: float,
    decided: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured objective's loss; the DPO metrics either way (SFT reports them against the reference)."""
    loss, metrics = dpo_loss(mse_pol, mse_ref, signs, weights, beta, decided)
    if objective == "sft":
        labels = pair_label(signs, weights)
        loss = sft_loss(jnp.where(labels >= 0, mse_pol[0], mse_pol[1]), labels, decided)
    return loss, metrics
