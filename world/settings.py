"""The small world's settings turned into each stage's config, and checked first.

``world/configs/world.py`` holds every setting once; this module derives the
trainer's, preprocessing's and the evaluation's configs from it, names the
variants (the paper's Tables I, III, IV and the rules beyond it), and
``check`` lists every problem of a world config in one error before anything
runs, as the trainer's check does for its config.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from bdpo_jax.errors import UserError
from world import scene

WORLD_SCORERS = ("composition", "contrast", "fidelity", "vividness")  # the voters (world.scorers)
HIDDEN_HUMAN = "world_human"  # evaluated, never voting; Diffusion-DPO's labels are drawn from it


@dataclasses.dataclass(frozen=True)
class Variant:
    title: str
    label_source: str
    objective: str = "dpo"
    refresh: bool = True  # the reference is refreshed every dpo.ref_refresh_every steps
    table: str = "III"  # where the replicate prints it: I, III (how labels are made), IV (refresh), beyond


VARIANTS: dict[str, Variant] = {
    "balanced": Variant("BalancedDPO", "vote", table="I"),
    "dpo": Variant("Diffusion-DPO", "human", refresh=False, table="I"),
    **{f"scorer_{name}": Variant(f"{name} alone", f"scorer:{name}") for name in WORLD_SCORERS},
    "random_scorer": Variant("random scorer per step", "random_scorer"),
    "weighted_sum": Variant("weighted sum", "weighted_sum"),
    "normalized": Variant("normalized scores", "normalized"),
    "sft": Variant("SFT on the vote's winners", "vote", objective="sft"),
    "no_refresh": Variant("BalancedDPO, no refresh", "vote", refresh=False, table="IV"),
    "unanimous": Variant("unanimous pairs only", "unanimous", table="beyond"),
    "veto": Variant("vote with a veto", "veto", table="beyond"),
}


class WorldConfigError(UserError):
    """A world config that does not fit itself or the grammar."""


def prompts(world: ml_collections.ConfigDict, part: str, count: int = 0) -> list[str]:
    """The first ``count`` prompts (0: all) of one part of the split."""
    found = scene.split_prompts()[part]
    return found[:count] if count else found


def check(world: ml_collections.ConfigDict) -> None:
    """Every problem of a world config, in one error, before anything runs."""
    split = scene.split_prompts()
    rules = [
        (world.seed >= 0, f"seed {world.seed} must be at least 0"),
        (world.draws >= 1, f"draws {world.draws} must be at least 1"),
        (world.vae.steps >= 1, f"vae.steps {world.vae.steps} must be at least 1"),
        (0 <= world.pretrain.prompts <= len(split["train"]),
         f"pretrain.prompts {world.pretrain.prompts}: 0 (all) to the {len(split['train'])} training prompts"),
        (0 <= world.pairs.prompts <= len(split["train"]),
         f"pairs.prompts {world.pairs.prompts}: 0 (all) to the {len(split['train'])} training prompts"),
        (world.evaluation.prompt_set in ("validation", "test"),
         f"evaluation.prompt_set {world.evaluation.prompt_set!r}: validation or test (the training prompts made "
         f"the base and the pairs)"),
        (world.evaluation.images_per_prompt >= 1,
         f"evaluation.images_per_prompt {world.evaluation.images_per_prompt} must be at least 1"),
        (world.sampler.steps >= 1, f"sampler.steps {world.sampler.steps} must be at least 1"),
        (world.cpu_threads >= 0, f"cpu_threads {world.cpu_threads}: 0 (torch's choice) or a thread count"),
        (world.sampler.guidance_scale >= 1, f"sampler.guidance_scale {world.sampler.guidance_scale} is below 1"),
        (world.dpo.veto_spread > 0, f"dpo.veto_spread {world.dpo.veto_spread} must be positive"),
        ("balanced" in world.variants, "variants: 'balanced' (BalancedDPO) is what every table compares"),
    ]  # fmt: skip
    unknown = sorted(set(world.variants) - set(VARIANTS))
    rules.append((not unknown, f"variants {unknown}: choose among {', '.join(VARIANTS)}"))
    part = world.evaluation.prompt_set
    if part in split:
        rules.append((0 <= world.evaluation.prompts <= len(split[part]),
                      f"evaluation.prompts {world.evaluation.prompts}: 0 (all) to the {len(split[part])} {part} "
                      f"prompts"))  # fmt: skip
    renders = len(prompts(world, "train", world.pretrain.prompts)) * world.pretrain.renders_per_prompt
    rules.append((1 <= world.pretrain.global_batch <= renders,
                  f"pretrain.global_batch {world.pretrain.global_batch}: 1 to the {renders} renders "
                  f"(pretrain.prompts x pretrain.renders_per_prompt)"))  # fmt: skip
    pairs = len(prompts(world, "train", world.pairs.prompts)) * world.pairs.per_prompt
    rules.append((1 <= world.dpo.global_batch <= pairs,
                  f"dpo.global_batch {world.dpo.global_batch}: 1 to the {pairs} pairs (pairs.prompts x "
                  f"pairs.per_prompt; the trainer checks it against the pairs a rule keeps)"))  # fmt: skip
    problems = [message for ok, message in rules if not ok]
    for name, variant in ((n, VARIANTS[n]) for n in world.variants if n in VARIANTS):
        try:  # the trainer's own checks of the values each variant's config gets
            from bdpo_jax.trainer import config_value_problems

            config = train_config(world, name)
            config.cache = "(the pairs' cache)"
            problems += [f"variant {name}: {p}" for p in config_value_problems(config)]
        except (ValueError, KeyError) as e:
            problems.append(f"variant {name} ({variant.title}): {e}")
    if problems:
        raise WorldConfigError("the world config does not fit:\n  " + "\n  ".join(dict.fromkeys(problems)))


def _trainer_base(world: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    from configs.train.common import base_config

    config = base_config()
    config.model.dtype = "float32"
    config.checkpoint.async_save = False
    config.train.flip = False  # a mirrored "red circle on the left" is on the right
    config.train.seed = world.seed
    return config


def pretrain_config(world: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The base's pretraining: diffusion loss (``sft``) on every render (image 0 of each pretraining pair)."""
    p = world.pretrain
    config = _trainer_base(world)
    config.train.objective = "sft"
    config.train.label_source = "human"  # image 0 of every pretraining pair
    config.train.steps = p.steps
    config.train.global_batch = p.global_batch
    config.train.caption_dropout = p.caption_dropout
    config.optimizer.learning_rate = p.learning_rate
    config.optimizer.warmup_steps = p.warmup_steps
    config.checkpoint.every = max(p.steps // 6, 1)
    config.log_every = max(p.steps // 15, 1)
    return config


def train_config(world: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """A variant's training run on the pairs' cache (``config.cache`` is the caller's)."""
    if variant not in VARIANTS:
        raise KeyError(f"variant {variant!r}: one of {', '.join(VARIANTS)}")
    v, d = VARIANTS[variant], world.dpo
    config = _trainer_base(world)
    config.train.objective = v.objective
    config.train.label_source = f"veto:{d.veto_spread}" if v.label_source == "veto" else v.label_source
    config.train.steps = d.steps
    config.train.global_batch = d.global_batch
    config.train.beta = d.beta
    config.train.ref_refresh_every = d.ref_refresh_every if v.refresh else 0
    config.train.caption_dropout = d.caption_dropout
    config.optimizer.learning_rate = d.learning_rate
    config.optimizer.warmup_steps = d.warmup_steps
    config.checkpoint.every = d.steps  # one save: a killed variant (a minute of work) trains again
    config.log_every = max(d.steps // 3, 1)
    return config


def preprocess_config(
    source: str | None = None, base: str | None = None, output: str | None = None, tie_policy: str = "drop"
) -> ml_collections.ConfigDict:
    """Preprocessing with the world's four voters; 2-2 ties dropped, as configs/preprocess/paper.py does."""
    from configs.preprocess.common import base_config

    config = base_config()
    for name in WORLD_SCORERS:
        config.scorers[name] = ml_collections.ConfigDict()
    config.tie_policy = tie_policy
    config.shard_size = 512
    config.batch_size = 64
    config.device = "cpu"
    config.source, config.base_model, config.output_dir = source, base, output
    return config


def evaluate_config(world: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The evaluation command's config: the world's prompts of ``evaluation.prompt_set``, its four scorers
    and the hidden human, its sampler; models and output_dir are the caller's."""
    from configs.evaluate.common import base_config, prompt_set

    e = world.evaluation
    config = base_config()
    config.prompts.world = prompt_set("inline", prompts=tuple(prompts(world, e.prompt_set, e.prompts)))
    for name in (*WORLD_SCORERS, HIDDEN_HUMAN):
        config.scorers[name] = ml_collections.ConfigDict()
    config.images_per_prompt = e.images_per_prompt
    config.seed = world.seed
    config.sampler.num_inference_steps = world.sampler.steps
    config.sampler.guidance_scale = world.sampler.guidance_scale
    config.batch_size = 60
    config.score_batch_size = 60
    config.block_size = 60
    config.cpu_threads = world.cpu_threads
    config.bootstrap.resamples = e.bootstrap_resamples
    config.grid.prompts = 6
    config.grid.cell_size = 128
    return config
