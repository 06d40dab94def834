"""The paper's experiment in the small world, over many draws: every variant of
its tables (and the rules beyond it) trained on each draw's pairs for the same
steps, evaluated against the base on the test prompts, and printed in the layout
of Tables I, III and IV as the mean win rate over draws with a 95% interval from
a bootstrap over draws and prompts (``world.draws``).

    python -m world.replicate [--workdir workdirs/world] [--config.draws=5] [--config.variants="('balanced', 'dpo')"]

Draw k (seed ``world.seed + k``) lives in ``WORKDIR/draw-SEED``, shared with
``python -m world.demo`` (whose draw is seed 0). Every finished stage, run and
evaluated image is kept: a killed run, run again, loses at most the stage it was in.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import ml_collections
from absl import flags

from bdpo_jax import console, errors
from world import draws as draw_stats
from world import settings, stages

BASE = "base"
TITLES = {
    "I": "Table I: BalancedDPO and Diffusion-DPO against the base, and against each other",
    "III": "Table III: how labels are made (each against the base)",
    "IV": "Table IV: reference refresh (each against the base)",
    "beyond": "Beyond the paper: label rules that protect the minority metric (each against the base)",
}
RESULT_NAME = "replicate_result.json"


def draw_world(world: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
    """The world config of draw k: the same settings, seed ``world.seed + k``."""
    draw = ml_collections.ConfigDict(world.to_dict())
    draw.seed = world.seed + k
    draw.draws = 1
    draw.lock()
    return draw


def comparisons(variants: list[str]) -> list[tuple[str, str]]:
    out = [(v, BASE) for v in variants]
    return out + ([("balanced", "dpo")] if "dpo" in variants else [])


def run_draw(workdir: Path, world: ml_collections.ConfigDict, log=console.say) -> Path:
    """Every stage of one draw; the folder of its evaluation."""
    draw = stages.draw_dir(workdir, world.seed)
    draw.mkdir(parents=True, exist_ok=True)
    with stages.timed(draw, "base"):
        base = stages.make_base(draw, world, log)
    with stages.timed(draw, "pairs"):
        cache = stages.make_pairs(draw, base, world, log)
    models = {BASE: base}
    for i, variant in enumerate(world.variants):
        log(f"  variant {i + 1}/{len(world.variants)}: {settings.VARIANTS[variant].title} ({world.dpo.steps} steps)")
        with stages.timed(draw, f"train {variant}"):
            models[variant] = stages.train_variant(draw, variant, base, cache, world)
    log(f"  evaluation: {len(models)} models on the {world.evaluation.prompt_set} prompts")
    spec = ",".join(f"{a}:{b}" for a, b in comparisons(list(world.variants)))
    with stages.timed(draw, f"evaluation {world.evaluation.prompt_set}"):
        stages.evaluate(draw, models, world, spec)
    return stages.evaluation_dir(draw, world)


def tables_text(tables, variants: list[str]) -> str:
    """Tables I, III, IV and the rules beyond the paper, from one set of tables."""
    from scorers_torch.evaluation import report

    groups: dict[str, list[tuple[str, str]]] = {name: [("balanced", BASE)] for name in TITLES}
    groups["I"] += [("dpo", BASE), ("balanced", "dpo")]
    for v in variants:
        if settings.VARIANTS[v].table != "I":
            groups[settings.VARIANTS[v].table].append((v, BASE))
    parts = []
    for name, rows in groups.items():
        present = [c for c in rows if c in tables.comparisons]
        if len(present) > 1 or name == "I":
            table = dataclasses.replace(tables, comparisons=tuple(present))
            parts.append(f"{TITLES[name]}\n{report.win_rate_text(table)}")
    return "\n\n".join(parts)


@dataclasses.dataclass
class Summary:
    """The replicate's numbers, for the README, the docs page and the demo's comparison."""

    world: dict  # the settings (seed: the first draw's)
    seeds: list[int]
    prompt_set: str
    prompts: int
    tables: dict  # statistic -> Tables.to_json()
    per_draw: dict  # statistic -> variant -> metric -> [win rate in each draw]
    worst: dict  # statistic -> variant -> WorstMetric
    differences: dict  # statistic -> variant -> PairedDifference (balanced minus variant)
    seconds: float


def summarise(workdir: Path, world: ml_collections.ConfigDict, seconds: float = 0.0) -> tuple[Summary, str]:
    """The statistics over draws, from every draw's evaluation, and their text."""
    from scorers_torch.evaluate import read_scores

    variants = list(world.variants)
    seeds = [world.seed + k for k in range(world.draws)]
    columns = {s: read_scores(stages.evaluation_dir(stages.draw_dir(workdir, s), world) / "scores.parquet")
               for s in seeds}  # fmt: skip
    metrics = (*settings.WORLD_SCORERS, settings.HIDDEN_HUMAN)
    e = world.evaluation
    resamples = draw_stats.Resamples.make(len(seeds), _prompt_count(world), e.bootstrap_resamples, seed=0)
    text, summary = [], Summary(world.to_dict(), seeds, e.prompt_set, _prompt_count(world), {}, {}, {}, {}, seconds)
    for statistic in ("best", "mean"):
        grid = draw_stats.outcome_grid(columns, comparisons(variants), metrics, "world", statistic)
        tables = draw_stats.tables(grid, resamples, 0.95, "world")
        rates = draw_stats.per_draw_rates(grid)
        summary.tables[statistic] = tables.to_json()
        summary.per_draw[statistic] = {
            a: {m: rates[c, i].tolist() for i, m in enumerate(metrics)} for c, (a, b) in enumerate(grid.comparisons)
            if b == BASE
        }  # fmt: skip
        worst = {v: draw_stats.worst_metric(grid, resamples, v, BASE, 0.95) for v in variants}
        differences = {v: draw_stats.worst_metric_difference(grid, resamples, "balanced", v, BASE, 0.95)
                       for v in variants if v != "balanced"}  # fmt: skip
        summary.worst[statistic] = {v: dataclasses.asdict(w) for v, w in worst.items()}
        summary.differences[statistic] = {v: dataclasses.asdict(d) for v, d in differences.items()}
        label = draw_stats_label(statistic, len(seeds), e.prompt_set, _prompt_count(world))
        text += [label, tables_text(tables, variants), "", finding(worst, differences), ""]
    return summary, "\n".join(text)


def _prompt_count(world: ml_collections.ConfigDict) -> int:
    return len(settings.prompts(world, world.evaluation.prompt_set, world.evaluation.prompts))


def draw_stats_label(statistic: str, draws: int, prompt_set: str, prompts: int) -> str:
    from scorers_torch.evaluation.stats import STATISTICS

    return (
        f"=== {STATISTICS[statistic]}, {draws} draws x {prompts} {prompt_set} prompts: mean win rate over draws "
        f"[95% bootstrap over draws and prompts] ==="
    )


def finding(worst: dict, differences: dict) -> str:
    """Each variant's worst metric against the base, and BalancedDPO's against it, draw by draw."""
    lines = ["Worst metric against the base (per draw the lowest win rate over metrics; mean over draws):"]
    for v, w in worst.items():
        above = "lower bound above 50%" if w.low > 0.5 else "not above 50%"
        per = ", ".join(f"{100 * r:.0f} {m}" for r, m in zip(w.per_draw, w.metrics, strict=True))
        lines.append(
            f"  {settings.VARIANTS[v].title:<28} {100 * w.mean:5.1f}% [{100 * w.low:.1f}, {100 * w.high:.1f}] "
            f"({above}); draws: {per}"
        )
    lines.append("BalancedDPO's worst metric minus each variant's, paired by draw (points of win rate):")
    for v, d in differences.items():
        verdict = "higher" if d.low > 0 else "lower" if d.high < 0 else "no clear difference"
        per = ", ".join(f"{100 * x:+.0f}" for x in d.per_draw)
        lines.append(
            f"  vs {settings.VARIANTS[v].title:<25} {100 * d.mean:+5.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] "
            f"({verdict}); draws: {per}"
        )
    return "\n".join(lines)


def run_replicate(workdir: Path, world: ml_collections.ConfigDict) -> tuple[Summary, str]:
    settings.check(world)
    stages.quiet_diffusers()
    stages.compile_cache(workdir)
    workdir = Path(workdir)
    start = time.perf_counter()
    for k in range(world.draws):
        draw = draw_world(world, k)
        console.say(f"draw {k + 1}/{world.draws} (seed {draw.seed}): {stages.draw_dir(workdir, draw.seed)}")
        run_draw(workdir, draw)
    summary, text = summarise(workdir, world, time.perf_counter() - start)
    (workdir / RESULT_NAME).write_text(json.dumps(dataclasses.asdict(summary), indent=1))
    from world import figures

    figures.draw_strips(summary, workdir / "replicate_draws.png")
    first = stages.draw_dir(workdir, world.seed)
    figures.paper_grid(stages.evaluation_dir(first, world), workdir / "replicate_grid.png")
    return summary, text


def main(argv: list[str]) -> None:
    del argv
    console.quiet_libraries()
    summary, text = run_replicate(Path(flags.FLAGS.workdir), flags.FLAGS.config)
    print()
    print(text)
    workdir = Path(flags.FLAGS.workdir)
    print(f"pictures: {workdir / 'replicate_draws.png'} (every draw), {workdir / 'replicate_grid.png'} (samples of "
          f"the first); {console.duration(summary.seconds)} in all")  # fmt: skip


def define_flags() -> None:
    from ml_collections import config_flags

    from world import configs

    flags.DEFINE_string("workdir", "workdirs/world", "Shared with world.demo: one folder per draw.")
    config_flags.DEFINE_config_file("config", f"{configs.path('world.py')}:replicate", "The world's settings.")


if __name__ == "__main__":
    errors.run(main, define_flags)
