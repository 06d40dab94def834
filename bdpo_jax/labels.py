"""Where a pair's preference comes from: every label source of the paper and
its ablations, from the cache's stored votes and scores.

Every source yields per-pair signs per component, ``signs`` (N, K) in
{+1, -1, 0} (+1: image 0 preferred, 0: no preference), and the components'
weights (K,), so that the objective has one formula. The weighted sum of
per-scorer losses has one component per scorer; every other source has one.

Two rules go beyond the paper, made so that no metric is pushed down for the
others (the vote outvotes a scorer that stands alone on a direction): ``unanimous``
counts a pair only where every scorer agrees, ``veto`` takes the vote but drops a
pair where an outvoted scorer prefers the other image by more than it typically
separates two images (the median of its absolute score difference within a pair,
times ``spread``, 1 by default). Pairs such a rule drops are left out of the data
(``drops_pairs``), as the vote's ties are, so every rule trains on as many decided
pairs per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bdpo_jax.errors import UserError

LABEL_SOURCES = ("vote", "human", "scorer", "random_scorer", "weighted_sum", "normalized", "unanimous", "veto")
SPECS = "vote, human, scorer:<name>, random_scorer, weighted_sum, normalized, unanimous, veto[:<spreads>]"
DEFAULT_VETO_SPREAD = 1.0


class LabelSourceError(UserError):
    """A label source that the cache cannot give (base of the config error that reports it)."""


@dataclasses.dataclass(frozen=True)
class LabelSource:
    """Which label trains the model. ``scorer_index`` picks one scorer's votes;
    ``weights`` weigh the per-scorer losses of ``weighted_sum``; ``score_scale`` is each
    scorer's scale (``SCALED``): ``normalized`` divides score differences by it, and an
    outvoted scorer's difference may reach ``veto_spread`` of it before it vetoes the pair."""

    kind: str = "vote"
    scorer_index: int | None = None
    weights: tuple[float, ...] | None = None
    score_scale: tuple[float, ...] | None = None
    veto_spread: float | None = None

    @classmethod
    def parse(
        cls,
        spec: str,
        scorer_names: Sequence[str],
        weights: Sequence[float] | None = None,
        score_scale: Sequence[float] | None = None,
    ) -> LabelSource:
        """One of ``SPECS``, checked against the cache's scorers."""
        kind, _, name = spec.partition(":")
        takes_argument = {"scorer": True, "veto": None}.get(kind, False)  # None: optional
        if kind not in LABEL_SOURCES or takes_argument not in (None, bool(name)):
            raise LabelSourceError(f"label source {spec!r}: choose one of {SPECS}")
        veto_spread = None
        if kind == "veto":
            try:
                veto_spread = float(name) if name else DEFAULT_VETO_SPREAD
            except ValueError:
                veto_spread = -1.0
            if not veto_spread > 0:
                raise LabelSourceError(f"label source {spec!r}: veto:<spreads> takes a positive number, e.g. veto:1.0")
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
        if kind in SCALED and score_scale is None:
            raise LabelSourceError(f"label source {kind!r} needs each scorer's score scale")
        return cls(
            kind,
            scorer_index=list(scorer_names).index(name) if kind == "scorer" else None,
            weights=tuple(float(w) for w in weights) if weights is not None else None,
            score_scale=tuple(score_scale) if kind in SCALED else None,
            veto_spread=veto_spread,
        )

    @property
    def drops_pairs(self) -> bool:
        """A rule that counts only some pairs: the others are left out of the data."""
        return self.kind in ("unanimous", "veto")

    def components(self, num_scorers: int) -> int:
        return num_scorers if self.kind == "weighted_sum" else 1


# Label sources that read each scorer's scale (``parse``'s ``score_scale``), and which one (data.CacheDataset's):
# normalized: the std of its scores; veto: the median of its absolute score difference within a pair.
SCALED = {"normalized": "std", "veto": "difference"}


def pair_signs(batch: Mapping[str, jax.Array], source: LabelSource, rng: jax.Array | None, xp=jnp):
    """(signs (N, K), weights (K,)), float32, from the batch's stored votes and scores.
    ``xp=numpy`` computes them on the host (every source but ``random_scorer``)."""
    votes = batch["votes"].astype(xp.float32)
    one = xp.ones((1,), xp.float32)
    if source.kind == "vote":
        return batch["label"].astype(xp.float32)[:, None], one
    if source.kind == "human":
        return xp.sign(batch["label_0"].astype(xp.float32) - 0.5)[:, None], one
    if source.kind == "scorer":
        return votes[:, source.scorer_index, None], one
    if source.kind == "random_scorer":  # one scorer for the whole step
        return votes[:, jax.random.randint(rng, (), 0, votes.shape[1]), None], one
    if source.kind == "unanimous":
        agree = (votes == votes[:, :1]).all(axis=1)
        return xp.where(agree, votes[:, 0], 0.0)[:, None], one
    if source.kind == "weighted_sum":
        k = votes.shape[1]
        return votes, xp.asarray(source.weights or (1.0 / k,) * k, xp.float32)
    scores = batch["scores"].astype(xp.float32)
    spreads = (scores[..., 0] - scores[..., 1]) / xp.asarray(source.score_scale, xp.float32)
    if source.kind == "normalized":
        return xp.sign(spreads.sum(axis=1))[:, None], one
    if source.kind == "veto":
        label = batch["label"].astype(xp.float32)
        objects = (votes == -label[:, None]) & (xp.abs(spreads) > source.veto_spread)
        return xp.where(objects.any(axis=1), 0.0, label)[:, None], one
    raise ValueError(f"unknown label source {source.kind!r}")


def decided_rows(arrays: Mapping[str, np.ndarray], source: LabelSource) -> np.ndarray:
    """Host side: which of a shard's pairs ``source`` decides (a bool per row)."""
    signs, _ = pair_signs({k: np.asarray(arrays[k]) for k in ("votes", "scores", "label")}, source, None, xp=np)
    return (signs != 0).any(axis=1)


def pair_label(signs: jax.Array, weights: jax.Array) -> jax.Array:
    """One sign per pair, s in {+1, -1, 0}: the weighted sum of its components' signs."""
    return jnp.sign(signs @ weights)
