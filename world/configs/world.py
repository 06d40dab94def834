"""The small world's settings, each written once: how its base is made, how many
pairs it samples, how every variant trains, how it is evaluated. Every stage's
own config (train, preprocess, evaluate) is derived from this one by
``world.settings``; ``world.settings.check`` validates it before anything runs.

    get_config("demo")       python -m world.demo: one draw, BalancedDPO against the base
    get_config("replicate")  python -m world.replicate: every variant on several draws
    get_config("test")       the suite's: the same code at a size that runs in seconds

A draw is a function of ``seed``: its VAE, text encoder, UNet initialisation,
pretraining data and order, preference pairs, training order and evaluation
noise all follow from it. The prompts' split (train / validation / test) is the
grammar's, the same in every draw (``world.scene.split_prompts``).

The DPO settings (learning rate, beta, T, steps) and the sampler's were chosen
on the validation prompts (``python -m world.select``; docs/world.md); the
tables use the test prompts only.
"""

import ml_collections

SIZES = ("test", "demo", "replicate")


def get_config(size: str = "demo") -> ml_collections.ConfigDict:
    if size not in SIZES:
        raise ValueError(f"world size {size!r}: one of {', '.join(SIZES)}")
    config = ml_collections.ConfigDict()
    config.size = size
    config.seed = 0  # the draw (replicate: the first of ``draws`` consecutive seeds)
    config.draws = 5 if size == "replicate" else 1

    # The base: a tiny VAE fit to renders of the training prompts, then its UNet pretrained by bdpo_jax.train
    # (diffusion loss) on renders of the training prompts.
    config.vae = ml_collections.ConfigDict({"steps": 800, "batch_size": 16})
    config.unet = ml_collections.ConfigDict(
        {
            "block_out_channels": [16, 32],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 1,
            "attention_head_dim": 4,
            "norm_num_groups": 4,
        }
    )
    config.pretrain = ml_collections.ConfigDict()
    config.pretrain.prompts = 0  # how many of the training prompts (0: all)
    config.pretrain.renders_per_prompt = 4
    config.pretrain.steps = 1500
    config.pretrain.global_batch = 32
    config.pretrain.learning_rate = 1e-3
    config.pretrain.warmup_steps = 50
    config.pretrain.caption_dropout = 0.1  # classifier-free guidance needs the unconditional model

    # Preference pairs, as Pick-a-Pic's: two samples of the base per prompt, seeds apart, the hidden human's pick.
    config.pairs = ml_collections.ConfigDict({"prompts": 0, "per_prompt": 2})  # prompts: of the training ones (0: all)

    # Sampling (the pairs and the evaluation): DPM-Solver steps and classifier-free guidance.
    config.sampler = ml_collections.ConfigDict({"steps": 20, "guidance_scale": 3.0})
    # torch's CPU threads while sampling (0: torch's choice). The images are the same on any count; on the idle
    # 2-core machine torch's choice made 27-31 img/s and 1 thread 15-21, on a machine loaded by other jobs 1 thread
    # was up to 8x faster.
    config.cpu_threads = 0

    # Every variant's training on the pairs (configs: world.settings.train_config). Chosen on the validation
    # prompts of draws 0 and 1 (python -m world.select; docs/world.md): of 13 candidates, 75 steps gave BalancedDPO
    # the highest worst-metric win rate against the base (52.5%; the earlier 150 steps: 38.8%).
    config.dpo = ml_collections.ConfigDict()
    config.dpo.steps = 75
    config.dpo.global_batch = 16
    config.dpo.beta = 5000.0
    config.dpo.ref_refresh_every = 50  # T (variants without refresh: 0)
    config.dpo.learning_rate = 2e-5
    config.dpo.warmup_steps = 10
    config.dpo.caption_dropout = 0.1
    # The 'veto' rule: an outvoted scorer vetoes a pair where it prefers the other image by more than this many
    # times its typical difference (the median over the pairs of its absolute score difference).
    config.dpo.veto_spread = 1.0

    config.variants = ("balanced",)

    # Evaluation: best (and mean) of N samples per prompt, every model against the base.
    config.evaluation = ml_collections.ConfigDict()
    config.evaluation.prompt_set = "test"  # validation: where settings are chosen (python -m world.select)
    config.evaluation.prompts = 0  # how many of the set's prompts (0: all)
    config.evaluation.images_per_prompt = 5
    config.evaluation.bootstrap_resamples = 1000

    if size == "replicate":
        from world.settings import VARIANTS

        config.variants = tuple(VARIANTS)
    elif size == "test":
        config.vae.steps = 4
        config.unet.block_out_channels = [8, 16]
        config.pretrain.prompts = 8
        config.pretrain.renders_per_prompt = 1
        config.pretrain.steps = 2
        config.pretrain.global_batch = 4
        config.pretrain.warmup_steps = 1
        config.pairs.prompts = 8
        config.sampler.steps = 2
        config.dpo.steps = 2
        config.dpo.global_batch = 4
        config.dpo.ref_refresh_every = 1
        config.dpo.warmup_steps = 1
        config.evaluation.prompts = 4
        config.evaluation.images_per_prompt = 2
        config.evaluation.bootstrap_resamples = 200
    config.lock()
    return config
