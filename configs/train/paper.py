"""The paper's setup: 2000 steps, 128 pairs per step, AdamW with warmup,
beta 5000, reference refresh every 100 steps. ``:sd15`` (default), ``:sd21``
(v-prediction, from the base pipeline's scheduler) or ``:sdxl`` (Adafactor,
activation checkpointing, as SDXL needs the memory)."""

import ml_collections

from configs.train.common import base_config

VARIANTS = ("sd15", "sd21", "sdxl")


def get_config(model: str = "sd15") -> ml_collections.ConfigDict:
    if model not in VARIANTS:
        raise ValueError(f"model {model!r}: choose one of {VARIANTS}")
    config = base_config()
    # Diffusion-DPO's train.py: --proportion_empty_prompts defaults to 0.2, which its launchers keep.
    config.train.caption_dropout = 0.2
    if model == "sd21":
        config.train.grad_accum = 2
    elif model == "sdxl":
        config.optimizer.name = "adafactor"
        config.model.remat = "save_dots"
        config.train.grad_accum = 4
    return config
