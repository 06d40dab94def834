"""Statistics over draws of the small world: a claim is a mean over independent
worlds, with an interval that counts both sources of chance.

Every draw evaluates its models on the same test prompts with its own noise, so
a comparison's per-prompt outcomes (1 win, 0.5 tie, 0 loss; best or mean of N)
form a draws x prompts grid. Its win rate is the grid's mean; its interval is a
percentile bootstrap that resamples draws and prompts independently (a crossed
design: the same prompts appear in every draw). One resample of draws and
prompts serves every comparison and metric, so differences between variants
are paired.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from scorers_torch.evaluation import stats


@dataclasses.dataclass(frozen=True)
class Grid:
    """Per-prompt outcomes of every comparison and metric in every draw."""

    comparisons: tuple[tuple[str, str], ...]
    metrics: tuple[str, ...]
    outcomes: np.ndarray  # (comparisons, metrics, draws, prompts)
    seeds: tuple[int, ...]
    statistic: str

    def index(self, a: str, b: str) -> int:
        return self.comparisons.index((a, b))


def outcome_grid(
    draws: Mapping[int, stats.Columns],
    comparisons: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    prompt_set: str,
    statistic: str = "best",
) -> Grid:
    """The outcomes of each draw's score table (seed -> ``scores.parquet`` columns), on the prompts all draws share."""
    seeds = tuple(sorted(draws))
    per_draw = []
    for seed in seeds:
        cells = []
        for a, b in comparisons:
            row = []
            for metric in metrics:
                pa = stats.per_prompt(draws[seed], a, prompt_set, metric)
                pb = stats.per_prompt(draws[seed], b, prompt_set, metric)
                if not np.array_equal(pa.prompt_index, pb.prompt_index):
                    raise ValueError(f"draw {seed}: {a} and {b} were evaluated on other prompts")
                row.append(stats.win_outcomes(getattr(pa, statistic), getattr(pb, statistic)))
            cells.append(row)
        per_draw.append(np.asarray(cells, np.float64))  # (comparisons, metrics, prompts)
    prompts = {p.shape[-1] for p in per_draw}
    if len(prompts) != 1:
        raise ValueError(f"the draws were evaluated on different numbers of prompts: {sorted(prompts)}")
    return Grid(tuple(comparisons), tuple(metrics), np.stack(per_draw, axis=2), seeds, statistic)


@dataclasses.dataclass(frozen=True)
class Resamples:
    """Bootstrap weights: how often each draw and each prompt is drawn, per resample."""

    draws: np.ndarray  # (R, D) counts summing to D
    prompts: np.ndarray  # (R, P) counts summing to P

    @classmethod
    def make(cls, num_draws: int, num_prompts: int, resamples: int, seed: int) -> Resamples:
        rng = np.random.default_rng(seed)
        d = rng.multinomial(num_draws, np.full(num_draws, 1 / num_draws), resamples)
        p = rng.multinomial(num_prompts, np.full(num_prompts, 1 / num_prompts), resamples)
        return cls(d.astype(np.float64), p.astype(np.float64))


def per_draw_rates(grid: Grid, resamples: Resamples | None = None) -> np.ndarray:
    """Win rates per draw: (comparisons, metrics, draws); per resample of prompts (R, comparisons, metrics, draws)."""
    if resamples is None:
        return grid.outcomes.mean(axis=-1)
    return np.einsum("cmdp,rp->rcmd", grid.outcomes, resamples.prompts) / grid.outcomes.shape[-1]


def over_draws(rates: np.ndarray, resamples: Resamples | None = None) -> np.ndarray:
    """The mean over the last (draws) axis; per resample, weighted by its draw counts."""
    if resamples is None:
        return rates.mean(axis=-1)
    weights = resamples.draws / resamples.draws.shape[1]
    return np.einsum("r...d,rd->r...", rates, weights)


def interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def tables(grid: Grid, resamples: Resamples, confidence: float, prompt_set: str) -> stats.Tables:
    """Tables whose win rates are means over draws with the crossed bootstrap's intervals
    (print them with ``scorers_torch.evaluation.report.win_rate_text``)."""
    point = over_draws(per_draw_rates(grid))
    boot = over_draws(per_draw_rates(grid, resamples), resamples)
    prompts = grid.outcomes.shape[-1]
    rows = []
    for c, (a, b) in enumerate(grid.comparisons):
        for m, metric in enumerate(grid.metrics):
            ties = int((grid.outcomes[c, m] == 0.5).sum())
            rows.append(stats.WinRate(a, b, prompt_set, metric, float(point[c, m]),
                                      *interval(boot[:, c, m], confidence), prompts, ties, grid.statistic))  # fmt: skip
    return stats.Tables(grid.comparisons, (prompt_set,), grid.metrics, tuple(rows), (), confidence, grid.statistic)


@dataclasses.dataclass(frozen=True)
class WorstMetric:
    """A variant's worst metric against the base in each draw, and its mean over draws."""

    variant: str
    per_draw: tuple[float, ...]  # the lowest win rate over metrics, in each draw
    metrics: tuple[str, ...]  # which metric it was, in each draw
    mean: float
    low: float
    high: float


def worst_metric(grid: Grid, resamples: Resamples, variant: str, base: str, confidence: float) -> WorstMetric:
    """The mean over draws of each draw's lowest win rate over metrics (a balanced model has no low metric)."""
    c = grid.index(variant, base)
    rates = per_draw_rates(grid)[c]  # (metrics, draws)
    boot = over_draws(per_draw_rates(grid, resamples)[:, c].min(axis=1), resamples)
    worst = rates.min(axis=0)
    return WorstMetric(
        variant,
        tuple(float(w) for w in worst),
        tuple(grid.metrics[i] for i in rates.argmin(axis=0)),
        float(worst.mean()),
        *interval(boot, confidence),
    )


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    a: str
    b: str
    per_draw: tuple[float, ...]  # a's worst-metric win rate minus b's, in each draw
    mean: float
    low: float
    high: float


def worst_metric_difference(
    grid: Grid, resamples: Resamples, a: str, b: str, base: str, confidence: float
) -> PairedDifference:
    """a's worst-metric win rate against the base minus b's, draw by draw (paired: same
    draws, prompts and noise), averaged over draws, with the crossed bootstrap's interval."""
    ia, ib = grid.index(a, base), grid.index(b, base)
    rates, boot = per_draw_rates(grid), per_draw_rates(grid, resamples)
    difference = rates[ia].min(axis=0) - rates[ib].min(axis=0)
    boot_difference = over_draws(boot[:, ia].min(axis=1) - boot[:, ib].min(axis=1), resamples)
    return PairedDifference(
        a, b, tuple(float(d) for d in difference), float(difference.mean()), *interval(boot_difference, confidence)
    )
