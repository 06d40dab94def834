"""BalancedDPO's majority vote over several scorers' pairwise preferences.

Each scorer k votes ``s_k = +1 if r_k(x0) >= r_k(x1) else -1``; the pair label
is ``sign(sum_k s_k)``. Only signs enter, so scorers on different scales
(cosine ~0.27, aesthetic ~5) weigh the same.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

TiePolicy = Literal["drop", "human", "zero"]
TIE_POLICIES = ("drop", "human", "zero")


def scorer_votes(scores: np.ndarray) -> np.ndarray:
    """scores (N, K, 2) -> votes (N, K) in {+1, -1}; +1 prefers image 0."""
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.shape[-1] != 2:
        raise ValueError(f"scores must have shape (pairs, scorers, 2), got {scores.shape}")
    return np.where(scores[..., 0] >= scores[..., 1], 1, -1).astype(np.int8)


def human_label(label_0: np.ndarray) -> np.ndarray:
    """Pick-a-Pic's label_0 (1, 0 or 0.5 for a tie) as +1, -1 or 0."""
    return np.sign(np.asarray(label_0, np.float64) - 0.5).astype(np.int8)


@dataclasses.dataclass(frozen=True)
class VoteResult:
    votes: np.ndarray  # (N, K) int8
    label: np.ndarray  # (N,) int8 in {+1, -1, 0}
    keep: np.ndarray  # (N,) bool: False where the tie policy drops the pair
    ties: int
    ties_to_human: int

    def counts(self) -> dict[str, int]:
        kept = self.label[self.keep]
        return {
            "pairs": len(self.label),
            "kept": int(self.keep.sum()),
            "ties": self.ties,
            "ties_dropped": int((~self.keep).sum()),
            "ties_to_human": self.ties_to_human,
            "label_+1": int((kept > 0).sum()),
            "label_-1": int((kept < 0).sum()),
            "label_0": int((kept == 0).sum()),
        }


def majority_vote(scores: np.ndarray, tie_policy: TiePolicy, human: np.ndarray | None = None) -> VoteResult:
    """Labels by majority vote; ties (possible with an even number of scorers)
    are dropped, decided by the human label, or kept as 0, as the config says."""
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie policy {tie_policy!r}: choose one of {TIE_POLICIES}")
    votes = scorer_votes(scores)
    label = np.sign(votes.sum(axis=1, dtype=np.int32)).astype(np.int8)
    tied = label == 0
    keep = np.ones(len(label), bool)
    ties_to_human = 0
    if tie_policy == "drop":
        keep = ~tied
    elif tie_policy == "human":
        if human is None:
            raise ValueError("tie policy 'human' needs the human labels (label_0)")
        label = np.where(tied, human_label(human), label).astype(np.int8)
        ties_to_human = int(tied.sum())
        keep = label != 0  # a human tie cannot break a scorer tie
    return VoteResult(votes, label, keep, int(tied.sum()), ties_to_human)
