"""The replicate command's tables and finding, from an evaluation's tables."""

import numpy as np

from bdpo_jax.replicate import finding, tables_text
from scorers_torch.evaluation import stats

MODELS = ("base", "balanced", "dpo", "no_refresh", "scorer_fidelity")
METRICS = ("fidelity", "contrast")


def columns(best: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
    """Scores of 20 prompts, one image each: model m's metric k is best[m][k] plus a per-prompt offset."""
    rows = [(m, p) for m in MODELS for p in range(20)]
    out = {
        "model": np.array([m for m, _ in rows], object),
        "prompt_set": np.array(["world"] * len(rows), object),
        "prompt_index": np.array([p for _, p in rows]),
    }
    for k, metric in enumerate(METRICS):
        out[metric] = np.array([best[m][k] + (p % 5) * 0.1 + (0.2 if p % 2 else 0) * (m != "base") for m, p in rows])
    return out


def test_tables_and_finding():
    scores = {
        "base": (0, 0),
        "balanced": (0.3, 0.3),
        "dpo": (0.3, -1),
        "no_refresh": (-1, 0.5),
        "scorer_fidelity": (1, -1),
    }
    comparisons = [(m, "base") for m in MODELS[1:]] + [("balanced", "dpo")]
    tables = stats.tabulate(columns(scores), comparisons, ["world"], list(METRICS), list(MODELS), 200, 0, 0.95)
    variants = list(MODELS[1:])
    text = tables_text(tables, variants)
    assert text.index("Table I") < text.index("Table III") < text.index("Table IV")
    table_1 = text[: text.index("Table III")]
    assert "balanced vs dpo" in table_1 and "no_refresh vs base" not in table_1
    assert "scorer_fidelity vs base" in text[text.index("Table III") : text.index("Table IV")]
    lines = finding(tables, variants)
    assert lines[0].startswith("BalancedDPO vs base (best-of-N): fidelity 100.0%")
    assert lines[0].endswith("every metric: yes")
    # every ablation loses one metric to the base; BalancedDPO's worst is a win
    assert len(lines) == 4 and all(" beats " in line for line in lines[1:])
