"""BalancedDPO in the small world, on a CPU: does training on majority-vote
labels make a model whose samples score better, on every metric?

  1. base model: a tiny SD-style pipeline whose UNet ``bdpo_jax.train``
     pretrains on rendered images of the training prompts ("a red circle on the
     left on a white background"); made once, then reused
  2. preference pairs as Pick-a-Pic's: two samples of the base per training
     prompt, seeds apart; four weight-free scorers on different scales vote
  3. BalancedDPO: vote labels, reference refreshed every T steps; export to a
     diffusers pipeline
  4. evaluation (``scorers_torch.evaluate``) against the base on the test
     prompts: win rates per metric with intervals, and a grid of samples

    python -m world.demo [--workdir workdirs/world] [--config.seed=3]

This is one draw of the world (seed 0 unless asked): the demo places it among the
draws of the replicate (``python -m world.replicate``) recorded in
``world/replicate_reference.json``, which is what the project's finding rests on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections
from absl import flags

from bdpo_jax import console, errors
from world import settings, stages

REFERENCE = Path(__file__).with_name("replicate_reference.json")  # a replicate's summary, as it printed it


def run_demo(workdir: Path, world: ml_collections.ConfigDict) -> dict:
    """Every stage of the draw, each skipped where its output exists; the evaluation's results."""
    settings.check(world)
    stages.quiet_diffusers()
    stages.compile_cache(workdir)
    draw = stages.draw_dir(workdir, world.seed)
    draw.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    console.say(f"1/4 base model: a tiny SD pipeline pretrained on rendered prompts (draw seed {world.seed}: {draw})")
    base = stages.make_base(draw, world, console.say)
    console.say("2/4 preference pairs: two samples of the base per prompt, labelled by four voting scorers")
    cache = stages.make_pairs(draw, base, world, console.say)
    console.say(f"3/4 BalancedDPO: {world.dpo.steps} steps on the vote labels, reference refreshed every T steps")
    trained = stages.train_variant(draw, "balanced", base, cache, world)
    e = world.evaluation
    console.say(
        f"4/4 evaluation against the base: {len(settings.prompts(world, e.prompt_set, e.prompts))} {e.prompt_set} "
        f"prompts, best of {e.images_per_prompt} samples each"
    )
    results = stages.evaluate(draw, {"base": base, "balanced": trained}, world)
    typical = stages.mean_of_n(results, world)
    summary = {
        "seed": world.seed,
        "win_rates": {w.metric: [w.win_rate, w.low, w.high] for w in results.tables.win_rates},
        "win_rates_mean_of_n": {w.metric: [w.win_rate, w.low, w.high] for w in typical.win_rates},
        "grid": str(results.grids["world"]),
        "exported_pipeline": str(trained),
        "seconds": time.perf_counter() - start,
    }
    (draw / "demo_result.json").write_text(json.dumps(summary, indent=2))
    return {"results": results, "typical": typical, **summary}


def placement(world: ml_collections.ConfigDict, tables, reference_path: Path = REFERENCE) -> str:
    """One line: this draw's worst metric against the recorded replicate's draws."""
    from scorers_torch.evaluation.stats import STATISTICS

    if not reference_path.is_file():
        return f"(no recorded replicate at {reference_path} to compare this draw with)"
    reference = json.loads(reference_path.read_text())
    mine = tables.worst("balanced", "base")
    worst = reference["worst"][tables.statistic]["balanced"]
    if differing := _differing(reference["world"], world.to_dict()):
        return f"(the recorded replicate used other settings: {differing}; this draw is not comparable with it)"
    draws = len(reference["seeds"])
    line = (
        f"BalancedDPO's worst metric ({STATISTICS[tables.statistic]}): this draw {100 * mine.win_rate:.1f}% "
        f"({mine.metric}); the replicate's {draws} draws {min(worst['per_draw']) * 100:.1f} to "
        f"{max(worst['per_draw']) * 100:.1f}%, mean {100 * worst['mean']:.1f}% [{100 * worst['low']:.1f}, "
        f"{100 * worst['high']:.1f}]"
    )
    if world.seed in reference["seeds"]:
        recorded = worst["per_draw"][reference["seeds"].index(world.seed)]
        agree = (
            "the same"
            if abs(recorded - mine.win_rate) < 1e-9
            else ("not the same: a draw repeats to the byte on one machine with the same libraries; docs/world.md")
        )
        line += f"; the replicate's draw of seed {world.seed} gave {100 * recorded:.1f}% ({agree})"
    return line


def _differing(recorded: dict, now: dict) -> str:
    """The settings (other than seed, draws and variants) in which two world configs differ, or ''."""
    skip = {"seed", "draws", "variants", "size", "cpu_threads"}  # which draws and models; threads change no image
    keys = sorted((recorded.keys() | now.keys()) - skip)
    return ", ".join(k for k in keys if recorded.get(k) != now.get(k))


def main(argv: list[str]) -> None:
    del argv
    console.quiet_libraries()
    world = flags.FLAGS.config
    outcome = run_demo(Path(flags.FLAGS.workdir), world)
    from scorers_torch.evaluation import report, stats

    print()
    for tables in (outcome["results"].tables, outcome["typical"]):
        print(report.win_rate_text(tables))
        worst = tables.worst("balanced", "base")
        print(
            f"BalancedDPO's worst metric against the base ({stats.STATISTICS[tables.statistic]}): {worst.metric} "
            f"at {100 * worst.win_rate:.1f}% [{100 * worst.low:.1f}, {100 * worst.high:.1f}]"
        )
        print(placement(world, tables) + "\n")
    print(f"grid (base | BalancedDPO, same seeds): {outcome['grid']}")
    print(f"trained pipeline: {outcome['exported_pipeline']} ({console.duration(outcome['seconds'])} in all)")


def define_flags() -> None:
    from ml_collections import config_flags

    from world import configs

    flags.DEFINE_string("workdir", "workdirs/world", "Where the world's draws (base, pairs, runs, evaluations) go.")
    config_flags.DEFINE_config_file("config", f"{configs.path('world.py')}:demo", "The world's settings (world.py).")


if __name__ == "__main__":
    errors.run(main, define_flags)
