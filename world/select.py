"""Settings of the small world chosen on its validation prompts, never on the test
prompts the reported tables use.

Two choices, in the order the stages need them:

1. **guidance** (the sampler's classifier-free guidance, for the pairs and the
   evaluation): each candidate samples the base on the validation prompts; the
   one whose samples the hidden human likes most on average is chosen (the
   attribute accuracy is printed beside it).
2. **DPO settings** (learning rate, beta, T, steps): BalancedDPO is trained with
   each candidate (one setting changed at a time from the world's) and evaluated
   against the base on the validation prompts; the candidate with the highest
   worst-metric win rate (best-of-N, the paper's statistic; mean over draws) wins.
   Every variant then trains with it, so the settings suit BalancedDPO, not the
   ablations or the rules beyond the paper.

    python -m world.select [--workdir workdirs/world] [--config.draws=2] [--step guidance|dpo]

The draws are the replicate's first ones (their bases and pairs are shared); the
runs go to ``DRAW/select/``, the evaluations to ``DRAW/eval-validation/``. What it
prints goes, with the choice, into world/configs/world.py and docs/world.md.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import flags

from bdpo_jax import console, errors
from world import draws as draw_stats
from world import settings, stages
from world.replicate import BASE, draw_world

GUIDANCE = (1.5, 2.0, 3.0, 4.5, 6.0)
SAMPLES_PER_PROMPT = 4
# Round 1: one setting changed at a time from the world's (its own values are the row "current").
ONE_AT_A_TIME = {
    "learning_rate": (1e-5, 4e-5),
    "beta": (2000.0, 10000.0),
    "ref_refresh_every": (25, 150),
    "steps": (100, 250),
}


def one_at_a_time() -> dict[str, dict]:
    """{candidate name: the DPO settings it changes}: a model name the evaluation accepts (letters, digits, _ . + -)."""
    return {f"{key}_{value:g}": {key: value} for key, values in ONE_AT_A_TIME.items() for value in values}


def candidates(world: ml_collections.ConfigDict, changes: dict[str, dict]) -> dict[str, ml_collections.ConfigDict]:
    """The world as it is ("current"), and one world per candidate's changed DPO settings."""
    out = {"current": world}
    for name, changed_settings in changes.items():
        changed = ml_collections.ConfigDict(world.to_dict())
        for key, value in changed_settings.items():
            changed.dpo[key] = type(world.dpo[key])(value)
        out[name] = changed
    return out


def guidance_table(workdir: Path, world: ml_collections.ConfigDict) -> dict[float, dict[str, float]]:
    """Per guidance, over the draws: the hidden human's mean utility of the base's samples
    on the validation prompts, and their attribute accuracy."""
    from scorers_torch.threads import torch_threads
    from world import diagnosis, scene

    prompts = settings.prompts(world, "validation", world.evaluation.prompts)
    repeated = [p for p in prompts for _ in range(SAMPLES_PER_PROMPT)]
    found: dict[float, list[dict[str, float]]] = {g: [] for g in GUIDANCE}
    for k in range(world.draws):
        draw = draw_world(world, k)
        base = stages.make_base(stages.draw_dir(workdir, draw.seed), draw, console.say)
        for guidance in GUIDANCE:
            with torch_threads(world.cpu_threads):
                accuracy, images = diagnosis.sample_accuracy(base, repeated, guidance, world.sampler.steps, draw.seed)
            human = np.mean([scene.human_utility(scene.measure(im), p) for im, p in zip(images, repeated, strict=True)])
            found[guidance].append(
                {"human utility": float(human), "attribute accuracy": np.mean(list(accuracy.values()))}
            )
            console.say(
                f"  draw {draw.seed}, guidance {guidance:g}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in found[guidance][-1].items())
            )
    return {g: {key: float(np.mean([row[key] for row in rows])) for key in rows[0]} for g, rows in found.items()}


@dataclasses.dataclass(frozen=True)
class Choice:
    name: str
    worst: float  # mean over draws of BalancedDPO's worst-metric win rate against the base
    low: float
    high: float
    mean_metric: float  # mean over metrics and draws of its win rates (the tie-break)
    per_draw: tuple[float, ...]


def dpo_table(workdir: Path, world: ml_collections.ConfigDict, changes: dict[str, dict]) -> list[Choice]:
    """Each candidate's BalancedDPO against the base on the validation prompts, best first."""
    from scorers_torch.evaluate import read_scores

    world = ml_collections.ConfigDict(world.to_dict())
    world.evaluation.prompt_set = "validation"
    names = list(candidates(world, changes))
    columns = {}
    for k in range(world.draws):
        draw_config = draw_world(world, k)
        draw = stages.draw_dir(workdir, draw_config.seed)
        console.say(f"draw {k + 1}/{world.draws} (seed {draw_config.seed}): {draw}")
        base = stages.make_base(draw, draw_config, console.say)
        cache = stages.make_pairs(draw, base, draw_config, console.say)
        models = {BASE: base}
        for name, candidate in candidates(draw_world(world, k), changes).items():
            console.say(f"  BalancedDPO with {name}")
            models[name] = stages.train_variant(draw, "balanced", base, cache, candidate, folder=f"select/{name}")
        stages.evaluate(draw, models, draw_config, ",".join(f"{n}:{BASE}" for n in names))
        columns[draw_config.seed] = read_scores(stages.evaluation_dir(draw, draw_config) / "scores.parquet")
    metrics = (*settings.WORLD_SCORERS, settings.HIDDEN_HUMAN)
    grid = draw_stats.outcome_grid(columns, [(n, BASE) for n in names], metrics, "world", "best")
    resamples = draw_stats.Resamples.make(world.draws, grid.outcomes.shape[-1], world.evaluation.bootstrap_resamples, 0)
    choices = []
    for name in names:
        worst = draw_stats.worst_metric(grid, resamples, name, BASE, 0.95)
        mean_metric = float(draw_stats.per_draw_rates(grid)[grid.index(name, BASE)].mean())
        choices.append(Choice(name, worst.mean, worst.low, worst.high, mean_metric, worst.per_draw))
    return sorted(choices, key=lambda c: (-c.worst, -c.mean_metric))


def main(argv: list[str]) -> None:
    del argv
    console.quiet_libraries()
    world, workdir, start = flags.FLAGS.config, Path(flags.FLAGS.workdir), time.perf_counter()
    settings.check(world)
    stages.quiet_diffusers()
    stages.compile_cache(workdir)
    record = {}
    if flags.FLAGS.step in ("guidance", "both"):
        table = guidance_table(workdir, world)
        best = max(table, key=lambda g: table[g]["human utility"])
        print(f"\nguidance on {world.draws} draws' bases, {SAMPLES_PER_PROMPT} samples of each validation prompt:")
        for g, row in table.items():
            print(
                f"  {g:4g}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()) + ("  <- chosen" if g == best else "")
            )
        record["guidance"] = {"table": {str(g): row for g, row in table.items()}, "chosen": best}
    if flags.FLAGS.step in ("dpo", "both"):
        changes = ast.literal_eval(flags.FLAGS.candidates) if flags.FLAGS.candidates else one_at_a_time()
        choices = dpo_table(workdir, world, changes)
        print(f"\nBalancedDPO's worst-metric win rate against the base (best-of-N), {world.draws} draws, validation:")
        for c in choices:
            per = ", ".join(f"{100 * w:.0f}" for w in c.per_draw)
            print(f"  {c.name:<24} {100 * c.worst:5.1f}% [{100 * c.low:.1f}, {100 * c.high:.1f}]  mean over metrics "
                  f"{100 * c.mean_metric:.1f}%  draws: {per}")  # fmt: skip
        record["dpo"] = [dataclasses.asdict(c) for c in choices]
    record["seconds"] = time.perf_counter() - start
    (workdir / "select_result.json").write_text(json.dumps(record, indent=1))
    print(f"\n({console.duration(record['seconds'])}; recorded in {workdir / 'select_result.json'})")


def define_flags() -> None:
    from ml_collections import config_flags

    from world import configs

    flags.DEFINE_string("workdir", "workdirs/world", "Shared with world.replicate: one folder per draw.")
    flags.DEFINE_enum("step", "both", ["guidance", "dpo", "both"], "Which choice to measure.")
    flags.DEFINE_string("candidates", None, "DPO candidates, {name: {dpo setting: value}}; default: one at a time.")
    config_flags.DEFINE_config_file("config", f"{configs.path('world.py')}:demo", "The world's settings (world.py).")


if __name__ == "__main__":
    errors.run(main, define_flags)
