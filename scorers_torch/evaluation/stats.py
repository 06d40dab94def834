"""The paper's statistics (Sec. IV-A) from a score table: per prompt and
metric the best of a model's N images; the win rate of A over B is the share of
prompts where A's best beats B's, ties counting half.

The best of N measures a model's upper tail: a model that is better on average
but less diverse can lose it. The mean of the N images per prompt (statistic
``mean``) measures the typical image; the two side by side tell the cases apart.

Intervals are percentile bootstraps over prompts. A comparison is paired: one
resample of prompt indices serves A and B alike (the per-prompt outcome is
resampled). The generator is seeded, so tables are reproducible.

A score table is a mapping of column name to numpy array with the columns of
``outputs.ROW_COLUMNS`` and one float column per metric (``scores.parquet``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bdpo_jax.errors import UserError

Columns = Mapping[str, np.ndarray]

STATISTICS = {"best": "best-of-N", "mean": "mean-of-N"}  # per prompt, over its N images


@dataclasses.dataclass(frozen=True)
class PerPrompt:
    """One model's scores on one prompt set under one metric, one entry per prompt."""

    prompt_index: np.ndarray  # (P,) ascending
    best: np.ndarray  # (P,) best of the prompt's N images
    mean: np.ndarray  # (P,) mean of the prompt's N images
    images: int  # P * N


@dataclasses.dataclass(frozen=True)
class WinRate:
    a: str
    b: str
    prompt_set: str
    metric: str
    win_rate: float  # share of prompts where a's statistic (best or mean of N) beats b's; ties count half
    low: float
    high: float
    prompts: int
    ties: int
    statistic: str = "best"  # what was compared per prompt: STATISTICS' keys


@dataclasses.dataclass(frozen=True)
class ModelScore:
    model: str
    prompt_set: str
    metric: str
    best: float  # mean over prompts of the best-of-N
    best_low: float
    best_high: float
    mean: float  # mean over all images
    mean_low: float
    mean_high: float
    prompts: int
    images: int


@dataclasses.dataclass(frozen=True)
class Tables:
    comparisons: tuple[tuple[str, str], ...]
    prompt_sets: tuple[str, ...]
    metrics: tuple[str, ...]
    win_rates: tuple[WinRate, ...]
    model_scores: tuple[ModelScore, ...]
    confidence: float
    statistic: str = "best"  # what the win rates compare per prompt: STATISTICS' keys

    def win_rate(self, a: str, b: str, prompt_set: str, metric: str) -> WinRate:
        return next(w for w in self.win_rates if (w.a, w.b, w.prompt_set, w.metric) == (a, b, prompt_set, metric))

    def worst(self, a: str, b: str, prompt_set: str | None = None) -> WinRate:
        """The row's lowest win rate (over every set and metric, or one set's): BalancedDPO claims balance."""
        row = [w for w in self.win_rates if (w.a, w.b) == (a, b) and prompt_set in (None, w.prompt_set)]
        return min(row, key=lambda w: w.win_rate)

    def to_json(self) -> dict[str, Any]:
        return {
            "comparisons": [f"{a} vs {b}" for a, b in self.comparisons],
            "prompt_sets": list(self.prompt_sets),
            "metrics": list(self.metrics),
            "confidence": self.confidence,
            "statistic": self.statistic,
            "win_rates": [dataclasses.asdict(w) for w in self.win_rates],
            "worst": {
                f"{a} vs {b}": dataclasses.asdict(self.worst(a, b)) for a, b in self.comparisons if self.win_rates
            },
            "model_scores": [dataclasses.asdict(m) for m in self.model_scores],
        }


def per_prompt(columns: Columns, model: str, prompt_set: str, metric: str) -> PerPrompt:
    rows = (columns["model"] == model) & (columns["prompt_set"] == prompt_set)
    if not rows.any():
        raise UserError(f"the score table has no rows of model {model!r} on prompt set {prompt_set!r}")
    prompts, inverse, counts = np.unique(columns["prompt_index"][rows], return_inverse=True, return_counts=True)
    if counts.min() != counts.max():
        raise UserError(
            f"model {model!r} on {prompt_set!r} has {counts.min()} to {counts.max()} images per prompt; "
            "best-of-N needs the same N for every prompt (finish the run first)"
        )
    values = np.asarray(columns[metric][rows], np.float64)
    best = np.full(len(prompts), -np.inf)
    np.maximum.at(best, inverse, values)
    mean = np.bincount(inverse, values, minlength=len(prompts)) / counts
    return PerPrompt(prompts, best, mean, int(rows.sum()))


def win_outcomes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per prompt: 1 where a beats b, 0.5 on a tie, 0 where b wins."""
    return (a > b) + 0.5 * (a == b)


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (one per prompt), resampling prompts."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2**22 // max(1, len(values)))  # bounds memory for large sets
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        means[start : start + count] = values[rng.integers(0, len(values), (count, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def compare(
    a: PerPrompt, b: PerPrompt, resamples: int, seed: int, confidence: float, statistic: str = "best"
) -> tuple[float, float, float, int, int]:
    """(win rate, low, high, prompts, ties) of a's best-of-N (or mean) over b's, on the prompts both have."""
    if statistic not in STATISTICS:
        raise UserError(f"statistic {statistic!r}: one of {', '.join(STATISTICS)}")
    common, ia, ib = np.intersect1d(a.prompt_index, b.prompt_index, return_indices=True)
    if not len(common):
        raise UserError("the two models share no prompt: nothing to compare")
    outcomes = win_outcomes(getattr(a, statistic)[ia], getattr(b, statistic)[ib])
    low, high = bootstrap_interval(outcomes, resamples, seed, confidence)
    return float(outcomes.mean()), low, high, len(common), int((outcomes == 0.5).sum())


def tabulate(
    columns: Columns,
    comparisons: Sequence[tuple[str, str]],
    prompt_sets: Sequence[str],
    metrics: Sequence[str],
    models: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    statistic: str = "best",
) -> Tables:
    """Win rates for every comparison, set and metric, and every model's mean scores."""
    models = list(models or dict.fromkeys([m for pair in comparisons for m in pair]))
    cache: dict[tuple[str, str, str], PerPrompt] = {}

    def get(model: str, prompt_set: str, metric: str) -> PerPrompt:
        if (model, prompt_set, metric) not in cache:
            cache[model, prompt_set, metric] = per_prompt(columns, model, prompt_set, metric)
        return cache[model, prompt_set, metric]

    win_rates = [
        WinRate(a, b, s, m, *compare(get(a, s, m), get(b, s, m), resamples, seed, confidence, statistic), statistic)
        for a, b in comparisons
        for s in prompt_sets
        for m in metrics
    ]
    model_scores = []
    for model in models:
        for s in prompt_sets:
            for m in metrics:
                scores = get(model, s, m)
                best_interval = bootstrap_interval(scores.best, resamples, seed, confidence)
                mean_interval = bootstrap_interval(scores.mean, resamples, seed, confidence)
                model_scores.append(
                    ModelScore(
                        model, s, m, float(scores.best.mean()), *best_interval, float(scores.mean.mean()),
                        *mean_interval, len(scores.prompt_index), scores.images,
                    )
                )  # fmt: skip
    return Tables(
        tuple(comparisons),
        tuple(prompt_sets),
        tuple(metrics),
        tuple(win_rates),
        tuple(model_scores),
        confidence,
        statistic,
    )
