"""BalancedDPO in the small world, on a CPU: does training on majority-vote
labels make a model whose samples score better, on every metric?

  1. base model: a tiny SD-style pipeline whose UNet ``bdpo_jax.train``
     pretrains on rendered images of prompts ("a red circle on the left on a
     white background"); made once, then reused
  2. preference pairs as Pick-a-Pic's: two samples of the base per prompt,
     seeds apart; four weight-free scorers on different scales vote
  3. BalancedDPO: vote labels, reference refreshed every T steps; export to a
     diffusers pipeline
  4. evaluation (``scorers_torch.evaluate``) against the base on held-out
     prompts: win rates per metric with intervals, and a grid of samples

    python -m bdpo_jax.demo [--workdir workdirs/world] [--size demo]

``python -m bdpo_jax.replicate`` runs every variant of the paper's tables in
the same work directory, reusing what the demo made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from absl import app, flags

from bdpo_jax import console
from bdpo_jax.errors import main_with_clear_errors


def run_demo(workdir: Path, size: str = "demo") -> dict:
    """Every stage, each skipped where its output exists; the evaluation's results."""
    from bdpo_jax import small_world
    from configs import world as world_config

    small_world.quiet_diffusers()
    small_world.compile_cache(workdir)
    world = world_config.get_config(size)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    console.say("1/4 base model: a tiny SD pipeline pretrained on rendered prompts")
    base = small_world.make_base(workdir, world, console.say)
    console.say("2/4 preference pairs: two samples of the base per prompt, labelled by four voting scorers")
    cache = small_world.make_pairs(workdir, base, world, console.say)
    console.say(f"3/4 BalancedDPO: {world.train_steps} steps on the vote labels, reference refreshed every T steps")
    trained = small_world.train_variant(workdir, "balanced", base, cache, world)
    console.say(
        f"4/4 evaluation against the base: {world.eval_prompts} held-out prompts, "
        f"best of {world.images_per_prompt} samples each"
    )
    results = small_world.evaluate(workdir / "eval", {"base": base, "balanced": trained}, world)
    typical = small_world.mean_of_n(results)
    summary = {
        "win_rates": {w.metric: [w.win_rate, w.low, w.high] for w in results.tables.win_rates},
        "win_rates_mean_of_n": {w.metric: [w.win_rate, w.low, w.high] for w in typical.win_rates},
        "grid": str(results.grids["world"]),
        "exported_pipeline": str(trained),
        "seconds": time.perf_counter() - start,
    }
    (workdir / "demo_result.json").write_text(json.dumps(summary, indent=2))
    return {"results": results, "typical": typical, **summary}


def main(argv: list[str]) -> None:
    del argv
    console.quiet_libraries()
    outcome = run_demo(Path(flags.FLAGS.workdir), flags.FLAGS.size)
    from scorers_torch.evaluation import report, stats

    print()
    for tables in (outcome["results"].tables, outcome["typical"]):
        print(report.win_rate_text(tables))
        worst = tables.worst("balanced", "base")
        print(
            f"BalancedDPO's worst metric against the base ({stats.STATISTICS[tables.statistic]}): {worst.metric} "
            f"at {100 * worst.win_rate:.1f}% [{100 * worst.low:.1f}, {100 * worst.high:.1f}]\n"
        )
    print(f"grid (base | BalancedDPO, same seeds): {outcome['grid']}")
    print(f"trained pipeline: {outcome['exported_pipeline']} ({console.duration(outcome['seconds'])} in all)")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdirs/world", "Where the world's base, pairs, runs and evaluations go.")
    flags.DEFINE_enum("size", "demo", ["test", "demo", "replicate"], "The world's size (configs/world.py).")
    app.run(main_with_clear_errors(main))
