"""Statistics over draws (world.draws) against a plain loop over the same resamples."""

import numpy as np
import pytest

from world import draws


def grid(seed: int = 0) -> draws.Grid:
    rng = np.random.default_rng(seed)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=(2, 3, 4, 6))  # comparisons, metrics, draws, prompts
    return draws.Grid((("a", "base"), ("b", "base")), ("m1", "m2", "m3"), outcomes, (0, 1, 2, 3), "best")


def test_the_crossed_bootstrap_is_a_resample_of_draws_and_prompts():
    g = grid()
    resamples = draws.Resamples.make(4, 6, 50, seed=1)
    assert (resamples.draws.sum(axis=1) == 4).all() and (resamples.prompts.sum(axis=1) == 6).all()
    fast = draws.over_draws(draws.per_draw_rates(g, resamples), resamples)  # (R, comparisons, metrics)
    for r in range(50):
        d = np.repeat(np.arange(4), resamples.draws[r].astype(int))
        p = np.repeat(np.arange(6), resamples.prompts[r].astype(int))
        slow = g.outcomes[:, :, d][:, :, :, p].mean(axis=(2, 3))
        np.testing.assert_allclose(fast[r], slow)


def test_worst_metric_and_paired_difference_by_hand():
    g = grid()
    resamples = draws.Resamples.make(4, 6, 200, seed=1)
    rates = g.outcomes.mean(axis=-1)  # comparisons, metrics, draws
    worst = draws.worst_metric(g, resamples, "a", "base", 0.95)
    np.testing.assert_allclose(worst.per_draw, rates[0].min(axis=0))
    assert worst.metrics == tuple(g.metrics[i] for i in rates[0].argmin(axis=0))
    assert worst.low <= worst.mean <= worst.high and worst.mean == pytest.approx(rates[0].min(axis=0).mean())
    difference = draws.worst_metric_difference(g, resamples, "a", "b", "base", 0.95)
    np.testing.assert_allclose(difference.per_draw, rates[0].min(axis=0) - rates[1].min(axis=0))
    assert difference.low <= difference.mean <= difference.high
    same = draws.worst_metric_difference(g, resamples, "a", "a", "base", 0.95)
    assert same.mean == same.low == same.high == 0.0  # paired: every resample's difference is zero
    tables = draws.tables(g, resamples, 0.95, "world")
    assert tables.win_rate("b", "base", "world", "m2").win_rate == pytest.approx(rates[1, 1].mean())
