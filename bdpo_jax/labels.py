"""Where a pair's preference comes from: every label source of the paper and
its ablations, from the cache's stored votes and scores.

Every source yields per-pair signs per component, ``signs`` (N, K) in
{+1, -1, 0} (+1: image 0 preferred, 0: no preference), and the components'
weights (K,), so that the objective has one formula. The weighted sum of
per-scorer losses has one component per scorer; every other source has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from bdpo_jax.errors import UserError

LABEL_SOURCES = ("vote", "human", "scorer", "random_scorer", "weighted_sum", "normalized")
SPECS = "vote, human, scorer:<name>, random_scorer, weighted_sum, normalized"


class LabelSourceError(UserError):
    """A label source that the cache cannot give (base of the config error that reports it)."""


@dataclasses.dataclass(frozen=True)
class LabelSource:
    """Which label trains the model. ``scorer_index`` picks one scorer's votes;
    ``weights`` weigh the per-scorer losses of ``weighted_sum``; ``score_scale``
    (each scorer's std of scores over the cache) z-scores ``normalized``."""

    kind: str = "vote"
    scorer_index: int | None = None
    weights: tuple[float, ...] | None = None
    score_scale: tuple[float, ...] | None = None

    @classmethod
    def parse(
        cls,
        spec: str,
        scorer_names: Sequence[str],
        weights: Sequence[float] | None = None,
        score_scale: Sequence[float] | None = None,
    ) -> LabelSource:
        """'vote', 'human', 'scorer:<name>', 'random_scorer', 'weighted_sum' or
        'normalized', checked against the cache's scorers."""
        kind, _, name = spec.partition(":")
        if kind not in LABEL_SOURCES or (kind == "scorer") != bool(name):
            raise LabelSourceError(f"label source {spec!r}: choose one of {SPECS}")
        if kind == "scorer" and name not in scorer_names:
            raise LabelSourceError(f"label source {spec!r}: the cache has scorers {list(scorer_names)}")
        if weights is not None:
            if kind != "weighted_sum":
                raise LabelSourceError(f"label_weights are for label_source 'weighted_sum', not {spec!r}")
            if len(weights) != len(scorer_names):
                raise LabelSourceError(
                    f"label_weights has {len(weights)} weights; the cache has {len(scorer_names)} scorers "
                    f"{list(scorer_names)}: give one weight per scorer, in that order"
                )
        if kind == "normalized" and score_scale is None:
            raise LabelSourceError("label source 'normalized' needs each scorer's score scale")
        return cls(
            kind,
            scorer_index=list(scorer_names).index(name) if kind == "scorer" else None,
            weights=tuple(float(w) for w in weights) if weights is not None else None,
            score_scale=tuple(score_scale) if kind == "normalized" else None,
        )

    def components(self, num_scorers: int) -> int:
        return num_scorers if self.kind == "weighted_sum" else 1


def pair_signs(batch: Mapping[str, jax.Array], source: LabelSource, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(signs (N, K), weights (K,)), float32, from the batch's stored votes and scores."""
    votes = batch["votes"].astype(jnp.float32)
    one = jnp.ones((1,), jnp.float32)
    if source.kind == "vote":
        return batch["label"].astype(jnp.float32)[:, None], one
    if source.kind == "human":
        return jnp.sign(batch["label_0"].astype(jnp.float32) - 0.5)[:, None], one
    if source.kind == "scorer":
        return votes[:, source.scorer_index, None], one
    if source.kind == "random_scorer":  # one scorer for the whole step
        return votes[:, jax.random.randint(rng, (), 0, votes.shape[1]), None], one
    if source.kind == "normalized":
        scores = batch["scores"].astype(jnp.float32)
        scale = jnp.asarray(source.score_scale, jnp.float32)
        return jnp.sign(((scores[..., 0] - scores[..., 1]) / scale).sum(axis=1))[:, None], one
    if source.kind == "weighted_sum":
        k = votes.shape[1]
        return votes, jnp.asarray(source.weights or (1.0 / k,) * k, jnp.float32)
    raise ValueError(f"unknown label source {source.kind!r}")


def pair_label(signs: jax.Array, weights: jax.Array) -> jax.Array:
    """One sign per pair, s in {+1, -1, 0}: the weighted sum of its components' signs."""
    return jnp.sign(signs @ weights)
