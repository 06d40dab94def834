"""LoRA runs of the paper's setup: adapters of rank 8 on every transformer
block's attention projections, learning rate 1e-5 (diffusers' Diffusion-DPO
LoRA example: --rank=8 --learning_rate=1e-5), the base frozen and held in the
compute dtype. ``:sd15`` (default), ``:sd21`` or ``:sdxl``; the rest is
``paper.py``'s, except that SDXL keeps AdamW (its state now covers only the
adapters)."""

import ml_collections

from configs.train import paper

VARIANTS = paper.VARIANTS


def get_config(model: str = "sd15") -> ml_collections.ConfigDict:
    config = paper.get_config(model)
    config.lora.rank = 8
    config.lora.alpha = 8.0
    config.lora.targets = ("attention",)
    config.lora.base_dtype = config.model.dtype
    config.optimizer.learning_rate = 1e-5
    config.optimizer.name = "adamw"
    return config
