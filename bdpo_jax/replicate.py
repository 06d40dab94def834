"""The paper's experiment in the small world: every variant of its tables
trained on the same pairs for the same steps, evaluated against the base and
against Diffusion-DPO, and printed in the layout of Tables I, III and IV.

    python -m bdpo_jax.replicate [--workdir workdirs/world] [--variants balanced,dpo,no_refresh]

It shares the work directory with ``python -m bdpo_jax.demo`` (the base, the
pairs and the BalancedDPO run are reused) and resumes where it stopped: every
finished stage, run and evaluated image is kept.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from absl import app, flags

from bdpo_jax import console
from bdpo_jax.errors import UserError, main_with_clear_errors

NAMES = {
    "balanced": "BalancedDPO",
    "dpo": "Diffusion-DPO",
    "random_scorer": "random scorer per step",
    "weighted_sum": "weighted sum",
    "normalized": "normalized scores",
    "no_refresh": "BalancedDPO, no refresh",
    "sft": "SFT on winners",
}
LABEL_ABLATIONS = ("scorer_", "random_scorer", "weighted_sum", "normalized", "sft")


def tables_text(tables, variants: list[str]) -> str:
    """Tables I, III and IV of the paper from one evaluation's tables."""
    from scorers_torch.evaluation import report

    def table(title: str, comparisons: list[tuple[str, str]]) -> str:
        present = [c for c in comparisons if c in tables.comparisons]
        if not present:
            return ""
        return f"{title}\n{report.win_rate_text(dataclasses.replace(tables, comparisons=tuple(present)))}\n"

    ablations = [v for v in variants if v.startswith(LABEL_ABLATIONS)]
    parts = [
        table(
            "Table I: BalancedDPO and Diffusion-DPO against the base, and against each other",
            [("balanced", "base"), ("dpo", "base"), ("balanced", "dpo")],
        ),
        table(
            "Table III: how labels are made (each against the base)",
            [("balanced", "base")] + [(v, "base") for v in ablations],
        ),
        table("Table IV: reference refresh (each against the base)", [("balanced", "base"), ("no_refresh", "base")]),
    ]
    return "\n".join(part for part in parts if part)


def finding(tables, variants: list[str]) -> list[str]:
    """BalancedDPO's win rate against the base on every metric, and its worst
    metric's win rate against each ablation's worst."""
    from scorers_torch.evaluation.stats import STATISTICS

    statistic = STATISTICS[tables.statistic]
    lines = []
    rates = [tables.win_rate("balanced", "base", "world", m) for m in tables.metrics]
    above = all(w.low > 0.5 for w in rates)
    lines.append(
        f"BalancedDPO vs base ({statistic}): "
        + ", ".join(f"{w.metric} {100 * w.win_rate:.1f}% [{100 * w.low:.1f}, {100 * w.high:.1f}]" for w in rates)
        + f" -> lower bound above 50% on every metric: {'yes' if above else 'no'}"
    )
    mine = tables.worst("balanced", "base")
    for variant in variants:
        if variant == "balanced" or (variant, "base") not in tables.comparisons:
            continue
        theirs = tables.worst(variant, "base")
        verdict = "beats" if mine.win_rate > theirs.win_rate else "does not beat"
        lines.append(
            f"worst metric vs base ({statistic}): BalancedDPO {100 * mine.win_rate:.1f}% ({mine.metric}) {verdict} "
            f"{NAMES.get(variant, variant)} {100 * theirs.win_rate:.1f}% ({theirs.metric})"
        )
    return lines


GRID_MODELS = ("base", "dpo", "balanced", "no_refresh", "weighted_sum")


def paper_grid(results, path: Path) -> Path:
    """Base, Diffusion-DPO, BalancedDPO and two ablations side by side, same seeds."""
    from scorers_torch.evaluate import read_scores
    from scorers_torch.evaluation import pictures

    columns = read_scores(results.scores)
    models = [m for m in GRID_MODELS if m in set(columns["model"])]
    sample = pictures.sample_prompts(columns, "world", 6, seed=0)
    pictures.grid(columns, results.output_dir, "world", models, results.tables.metrics, sample, 0, 96).save(path)
    return path


def run_replicate(workdir: Path, size: str = "replicate", variants: list[str] | None = None) -> dict:
    from bdpo_jax import small_world
    from configs import world as world_config
    from configs.train.world import VARIANTS

    small_world.quiet_diffusers()
    small_world.compile_cache(workdir)
    world = world_config.get_config(size)
    variants = list(variants or world.variants)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "balanced" not in variants:
        raise UserError(f"--variants: {unknown or 'balanced is missing'}; choose among {', '.join(VARIANTS)}")
    workdir = Path(workdir)
    start = time.perf_counter()
    console.say("base model")
    base = small_world.make_base(workdir, world, console.say)
    console.say("preference pairs")
    cache = small_world.make_pairs(workdir, base, world, console.say)
    models = {"base": base}
    for i, variant in enumerate(variants):
        console.say(f"variant {i + 1}/{len(variants)}: {NAMES.get(variant, variant)} ({world.train_steps} steps)")
        models[variant] = small_world.train_variant(workdir, variant, base, cache, world)
    console.say(f"evaluation: {len(models)} models on {world.eval_prompts} held-out prompts")
    comparisons = "*:base" + (",balanced:dpo" if "dpo" in variants else "")
    results = small_world.evaluate(workdir / "eval", models, world, comparisons)
    typical = small_world.mean_of_n(results)
    text = "\n".join(
        [
            tables_text(results.tables, variants),
            "The same comparisons on each prompt's mean over its N images (the typical image):\n",
            tables_text(typical, variants),
        ]
    )
    lines = finding(results.tables, variants) + finding(typical, variants)
    grid = paper_grid(results, workdir / "replicate_grid.png")
    summary = {"variants": variants, "finding": lines, "grid": str(grid),
               "seconds": time.perf_counter() - start}  # fmt: skip
    (workdir / "replicate_result.json").write_text(json.dumps(summary, indent=2))
    return {"results": results, "tables": text, **summary}


def main(argv: list[str]) -> None:
    del argv
    console.quiet_libraries()
    variants = flags.FLAGS.variants.split(",") if flags.FLAGS.variants else None
    outcome = run_replicate(Path(flags.FLAGS.workdir), flags.FLAGS.size, variants)
    print()
    print(outcome["tables"])
    print("\n".join(outcome["finding"]))
    print(f"grid: {outcome['grid']} ({console.duration(outcome['seconds'])} in all)")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdirs/world", "Shared with bdpo_jax.demo: base, pairs, runs, evaluations.")
    flags.DEFINE_enum("size", "replicate", ["test", "demo", "replicate"], "The world's size (configs/world.py).")
    flags.DEFINE_string("variants", None, "Comma-separated variants (configs/train/world.py); default: all.")
    app.run(main_with_clear_errors(main))
