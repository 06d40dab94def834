"""Pictures of the replicate: one strip per variant and metric, a dot per draw."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from world import settings

if TYPE_CHECKING:
    from world.replicate import Summary


def draw_strips(summary: Summary, path: Path, statistic: str = "best") -> Path:
    """Each variant's win rate against the base, per metric: a dot per draw, the mean as a bar,
    its interval over draws and prompts as a line; 50% dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_draw = summary.per_draw[statistic]
    variants = list(per_draw)
    metrics = list(next(iter(per_draw.values())))
    rows = {(w["a"], w["metric"]): w for w in summary.tables[statistic]["win_rates"] if w["b"] == "base"}
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.1 * len(metrics), 0.32 * len(variants) + 1.6),
                                sharey=True)  # fmt: skip
    for ax, metric in zip(axes, metrics, strict=True):
        for y, variant in enumerate(variants):
            values = [100 * v for v in per_draw[variant][metric]]
            row = rows[variant, metric]
            ax.plot([100 * row["low"], 100 * row["high"]], [y, y], color="0.7", linewidth=3, solid_capstyle="butt")
            ax.scatter(values, [y] * len(values), s=14, color="tab:blue", zorder=3)
            ax.plot([100 * row["win_rate"]] * 2, [y - 0.3, y + 0.3], color="black", linewidth=1.5)
        ax.axvline(50, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xlim(0, 100)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("win rate vs base (%)", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(range(len(variants)), [settings.VARIANTS[v].title for v in variants])
    axes[0].invert_yaxis()
    from scorers_torch.evaluation.stats import STATISTICS

    figure.suptitle(
        f"{STATISTICS[statistic]} win rate against the base, {len(summary.seeds)} draws x {summary.prompts} "
        f"{summary.prompt_set} prompts: a dot per draw, bar the mean, grey its 95% interval",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


GRID_MODELS = ("base", "dpo", "balanced", "no_refresh", "normalized", "unanimous", "veto")


def paper_grid(evaluation: Path, path: Path) -> Path:
    """One draw's base, Diffusion-DPO, BalancedDPO, and the variants that differ most, side by side,
    the same seeds, each image's scores under it."""
    from scorers_torch.evaluate import read_scores
    from scorers_torch.evaluation import pictures

    columns = read_scores(evaluation / "scores.parquet")
    models = [m for m in GRID_MODELS if m in set(columns["model"])]
    metrics = (*settings.WORLD_SCORERS, settings.HIDDEN_HUMAN)
    sample = pictures.sample_prompts(columns, "world", 6, seed=0)
    pictures.grid(columns, evaluation, "world", models, metrics, sample, 0, 96).save(path)
    return path
