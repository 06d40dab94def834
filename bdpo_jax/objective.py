"""Diffusion-DPO with BalancedDPO's label sources, as pure functions.

For a pair (x0, x1) with shared noise and timestep, and s = +1 when x0 is
preferred (-1 when x1 is):

    l_theta = -0.5 * [(mse_pol(x0) - mse_pol(x1)) - (mse_ref(x0) - mse_ref(x1))]
    loss    = -log sigmoid(beta * s * l_theta)

as Wallace et al.'s reference implementation writes it (their scale term
-0.5 * beta). s comes from the cache's stored scores by the configured label
source; a label of 0 (a kept tie) contributes no gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

LABEL_SOURCES = ("vote", "human", "scorer", "random_scorer", "weighted_sum", "normalized", "sft")


@dataclasses.dataclass(frozen=True)
class LabelSource:
    """Which label trains the model. ``scorer`` names one scorer's column;
    ``weights`` weigh the per-scorer losses of ``weighted_sum``; ``score_scale``
    (per scorer std of scores over the cache) z-scores ``normalized``."""

    kind: str = "vote"
    scorer_index: int | None = None
    weights: tuple[float, ...] | None = None
    score_scale: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, spec: str, scorer_names: list[str], **kwargs) -> LabelSource:
        """'vote', 'human', 'scorer:<name>', 'random_scorer', 'weighted_sum', 'normalized' or 'sft'."""
        kind, _, name = spec.partition(":")
        if kind not in LABEL_SOURCES or (kind == "scorer") != bool(name):
            raise ValueError(
                f"label source {spec!r}: choose one of vote, human, scorer:<name>, random_scorer, "
                f"weighted_sum, normalized, sft"
            )
        if kind == "scorer":
            if name not in scorer_names:
                raise ValueError(f"label source {spec!r}: the cache has scorers {scorer_names}")
            return cls(kind, scorer_index=scorer_names.index(name), **kwargs)
        return cls(kind, **kwargs)


def per_sample_mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over every axis but the batch, in fp32."""
    error = (prediction.astype(jnp.float32) - target.astype(jnp.float32)) ** 2
    return error.reshape(error.shape[0], -1).mean(axis=1)


def implicit_reward_gap(mse_pol_0: jax.Array, mse_pol_1: jax.Array, mse_ref_0: jax.Array, mse_ref_1: jax.Array):
    """l_theta: how much more the policy (relative to the reference) improved on x0 than on x1."""
    return -0.5 * ((mse_pol_0 - mse_pol_1) - (mse_ref_0 - mse_ref_1))


def pair_labels(batch: Mapping[str, jax.Array], source: LabelSource, rng: jax.Array) -> jax.Array:
    """s per pair in {+1, -1, 0}, float32, from the batch's stored votes and scores."""
    votes = batch["votes"].astype(jnp.float32)
    if source.kind in ("vote", "sft"):
        return batch["label"].astype(jnp.float32)
    if source.kind == "human":
        return jnp.sign(batch["label_0"].astype(jnp.float32) - 0.5)
    if source.kind == "scorer":
        return votes[:, source.scorer_index]
    if source.kind == "random_scorer":  # one scorer for the whole step
        return votes[:, jax.random.randint(rng, (), 0, votes.shape[1])]
    if source.kind == "normalized":
        scores = batch["scores"].astype(jnp.float32)
        scale = jnp.asarray(source.score_scale, jnp.float32)
        return jnp.sign(((scores[..., 0] - scores[..., 1]) / scale).sum(axis=1))
    if source.kind == "weighted_sum":  # the loss uses every vote; report the vote sign
        return jnp.sign(votes.sum(axis=1))
    raise ValueError(f"unknown label source {source.kind!r}")


def dpo_loss(
    mse_pol: tuple[jax.Array, jax.Array],
    mse_ref: tuple[jax.Array, jax.Array],
    labels: jax.Array,
    beta: float,
    batch: Mapping[str, jax.Array] | None = None,
    source: LabelSource = LabelSource(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean loss over pairs and its metrics. ``weighted_sum`` (the paper's
    vanilla aggregation) is -sum_k w_k log sigmoid(beta * s_k * l_theta)."""
    gap = implicit_reward_gap(*mse_pol, *mse_ref)
    if source.kind == "weighted_sum":
        votes = batch["votes"].astype(jnp.float32)
        k = votes.shape[1]
        weights = jnp.asarray(source.weights if source.weights else (1.0 / k,) * k, jnp.float32)
        per_pair = -(weights[None, :] * jax.nn.log_sigmoid(beta * votes * gap[:, None])).sum(axis=1)
    else:
        per_pair = -jax.nn.log_sigmoid(beta * labels * gap)
    margin = labels * gap
    decided = jnp.maximum((labels != 0).sum(), 1)
    metrics = {
        # a margin of exactly 0 (policy == reference) counts half, as in diffusers' DPO script
        "implicit_accuracy": (((margin > 0) + 0.5 * (margin == 0)) * (labels != 0)).sum() / decided,
        "reward_margin": beta * (margin * (labels != 0)).sum() / decided,
        "label_balance": (labels > 0).mean(),
    }
    return per_pair.mean(), metrics


def sft_loss(mse_pol: tuple[jax.Array, jax.Array], labels: jax.Array) -> jax.Array:
    """Plain diffusion loss on each pair's winner (ties skipped): the SFT baseline."""
    winner = jnp.where(labels >= 0, mse_pol[0], mse_pol[1])
    return (winner * (labels != 0)).sum() / jnp.maximum((labels != 0).sum(), 1)
