"""The small world's sizes: ``test`` (the suite's, seconds), ``demo``
(``python -m bdpo_jax.demo``) and ``replicate`` (``python -m bdpo_jax.replicate``).
Every stage's own config (train, preprocess, evaluate) is in its folder; this
file says how much of each the world makes and which variants run."""

import ml_collections

from configs.train.world import VARIANTS


def get_config(size: str = "demo") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # The base: a tiny VAE fit to renders, then the UNet pretrained on renders by bdpo_jax.
    config.vae_steps = 800
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
    config.pretrain_prompts = 210  # the training prompts (the grammar's 270 less the held-out 60: 210)
    config.renders_per_prompt = 4  # pretraining images of each
    config.pretrain_steps = 1500
    # Preference pairs: two samples of the base per prompt, seeds apart (as Pick-a-Pic's).
    config.pair_prompts = 210  # the training prompts, each ``pairs_per_prompt`` times
    config.pairs_per_prompt = 2
    config.sampler_steps = 20
    config.guidance_scale = 3.0
    # Training and evaluation.
    config.train_steps = 150
    config.variants = ("balanced",)
    config.images_per_prompt = 5
    config.eval_prompts = 60  # of the held-out prompts
    if size == "replicate":
        config.variants = VARIANTS
    elif size == "test":
        config.vae_steps = 4
        config.unet.block_out_channels = [8, 16]
        config.unet.attention_head_dim = 4
        config.unet.norm_num_groups = 4
        config.pretrain_prompts = 8
        config.renders_per_prompt = 2
        config.pretrain_steps = 0  # the random UNet is the base: one compile less
        config.pair_prompts = 8
        config.pairs_per_prompt = 2
        config.sampler_steps = 2
        config.train_steps = 2
        config.images_per_prompt = 2
        config.eval_prompts = 4
    elif size != "demo":
        raise ValueError(f"world size {size!r}: test, demo or replicate")
    return config
