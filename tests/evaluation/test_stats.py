"""Best-of-N, ties and win rates against hand computations; the bootstrap
interval's coverage where the true win rate is known; the tables' layout."""

import math

import numpy as np
import pytest

from scorers_torch.evaluation import report, stats


def score_columns(values: dict[str, list[list[float]]], prompt_set: str = "set") -> dict[str, np.ndarray]:
    """A score table with one metric "m": values[model][prompt][image]."""
    rows = [
        (model, p, i, v)
        for model, prompts in values.items()
        for p, images in enumerate(prompts)
        for i, v in enumerate(images)
    ]
    return {
        "model": np.array([r[0] for r in rows], object),
        "prompt_set": np.array([prompt_set] * len(rows), object),
        "prompt_index": np.array([10 * r[1] for r in rows]),  # indices need not be contiguous
        "image_index": np.array([r[2] for r in rows]),
        "m": np.array([r[3] for r in rows], np.float32),
    }


# Three images per prompt. Prompt 0: A's best 0.9 beats B's 0.8. Prompt 1: both
# best 0.5 (a tie, although every other image differs). Prompt 2: B's 0.7 beats A's 0.6.
# Prompt 3: A's 0.4 beats B's 0.3. Win rate (1 + 0.5 + 0 + 1) / 4 = 0.625.
HAND = {
    "A": [[0.1, 0.9, 0.2], [0.5, 0.0, 0.5], [0.6, 0.6, 0.1], [0.4, 0.3, 0.2]],
    "B": [[0.8, 0.7, 0.1], [0.2, 0.5, 0.4], [0.7, 0.0, 0.0], [0.3, 0.1, 0.2]],
}


def test_best_of_n_ties_and_win_rate_by_hand():
    columns = score_columns(HAND)
    a = stats.per_prompt(columns, "A", "set", "m")
    np.testing.assert_array_equal(a.prompt_index, [0, 10, 20, 30])
    np.testing.assert_allclose(a.best, [0.9, 0.5, 0.6, 0.4], rtol=1e-6)
    np.testing.assert_allclose(a.mean, [0.4, 1 / 3, 1.3 / 3, 0.3], rtol=1e-6)
    b = stats.per_prompt(columns, "B", "set", "m")
    np.testing.assert_array_equal(stats.win_outcomes(a.best, b.best), [1, 0.5, 0, 1])
    rate, low, high, prompts, ties = stats.compare(a, b, resamples=2000, seed=0, confidence=0.95)
    assert (rate, prompts, ties) == (0.625, 4, 1)
    assert 0 <= low <= rate <= high <= 1
    reverse = stats.compare(b, a, resamples=2000, seed=0, confidence=0.95)
    assert reverse[0] == 1 - rate and reverse[4] == 1


def test_mean_of_n_win_rate_by_hand():
    """Per-prompt means: A 0.4, 1/3, 0.433, 0.3 against B 0.533, 0.367, 0.233, 0.2:
    A wins prompts 2 and 3 only (its best of N wins 0 and 3 and ties 1)."""
    tables = stats.tabulate(score_columns(HAND), [("A", "B")], ["set"], ["m"], resamples=200, statistic="mean")
    assert tables.win_rate("A", "B", "set", "m").win_rate == 0.5
    assert "A's mean-of-N over B's" in report.win_rate_text(tables)
    with pytest.raises(ValueError, match="statistic 'median'"):
        stats.tabulate(score_columns(HAND), [("A", "B")], ["set"], ["m"], statistic="median")


def test_tables_and_layout():
    columns = score_columns(HAND)
    tables = stats.tabulate(columns, [("A", "B")], ["set"], ["m"], resamples=500)
    win = tables.win_rate("A", "B", "set", "m")
    assert win.win_rate == 0.625 and tables.worst("A", "B") == win
    scores = {s.model: s for s in tables.model_scores}
    assert scores["A"].best == pytest.approx(np.mean([0.9, 0.5, 0.6, 0.4]))
    assert scores["B"].mean == pytest.approx(np.mean(HAND["B"]))
    assert scores["A"].images == 12 and scores["A"].prompts == 4
    text = report.win_rate_text(tables)
    assert "A vs B" in text and "62.5 [" in text and "62.5 (set m)" in text
    assert "| A vs B | set m | worst |" in report.markdown(tables)


def test_worst_metric_of_a_row():
    columns = score_columns(HAND)
    columns["n"] = -columns["m"]  # B wins this metric where A won m
    tables = stats.tabulate(columns, [("A", "B")], ["set"], ["m", "n"], resamples=200)
    assert tables.worst("A", "B").metric == "n"
    assert tables.worst("A", "B").win_rate == pytest.approx(0.375)


def test_model_against_itself_is_all_ties():
    columns = score_columns({"A": HAND["A"], "A2": HAND["A"]})
    rate, low, high, prompts, ties = stats.compare(
        stats.per_prompt(columns, "A", "set", "m"), stats.per_prompt(columns, "A2", "set", "m"), 1000, 0, 0.95
    )
    assert (rate, low, high, ties) == (0.5, 0.5, 0.5, prompts)


def test_unequal_images_per_prompt_is_an_error():
    columns = score_columns({"A": [[0.1, 0.2], [0.3]]})
    with pytest.raises(ValueError, match="images per prompt"):
        stats.per_prompt(columns, "A", "set", "m")


def test_bootstrap_interval_covers_the_true_win_rate():
    """A's best-of-N ~ N(d, 1), B's ~ N(0, 1): the true win rate is Phi(d / sqrt 2).
    400 repetitions of 200 prompts; a 95% interval should cover it about 95% of the
    time (binomial sd 1.1%)."""
    rng = np.random.default_rng(0)
    d, prompts, repetitions = 0.5, 200, 400
    truth = 0.5 * (1 + math.erf(d / 2))  # Phi(d / sqrt 2): a - b ~ N(d, 2)
    covered = 0
    for repetition in range(repetitions):
        a = rng.normal(d, 1, prompts)
        b = rng.normal(0, 1, prompts)
        low, high = stats.bootstrap_interval(stats.win_outcomes(a, b), 1000, repetition, 0.95)
        covered += low <= truth <= high
    print(f"coverage {covered / repetitions:.3f} of the true win rate {truth:.3f}")
    assert 0.90 <= covered / repetitions <= 0.99, covered / repetitions


def test_bootstrap_is_reproducible_and_narrows_with_more_prompts():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 2, 50).astype(float)
    large = rng.integers(0, 2, 5000).astype(float)
    assert stats.bootstrap_interval(small, 500, 3, 0.95) == stats.bootstrap_interval(small, 500, 3, 0.95)
    width = [np.subtract(*stats.bootstrap_interval(x, 500, 0, 0.95)[::-1]) for x in (small, large)]
    assert width[1] < width[0] / 5
