"""UNet configs of the supported model families, in diffusers' ``config.json`` form.

The full-size ones are the published SD1.5, SD2.1 and SDXL-base UNet configs,
for building models with random weights (benchmarks, shape checks). The tiny
ones keep each family's structure at a size that runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
from typing import Any

_SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
_SDXL_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
_SDXL_UP = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]

_PRESETS: dict[str, dict[str, Any]] = {
    "sd15": {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": _SD_DOWN,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": _SD_UP,
    },
    "sdxl": {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 2048,
        "cross_attention_norm": None,
        "down_block_types": _SDXL_DOWN,
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": _SDXL_UP,
        "upcast_attention": None,
        "use_linear_projection": True,
    },
}

# SD2.1: linear projections, per-block head counts, OpenCLIP-H text states.
_PRESETS["sd21"] = {
    **_PRESETS["sd15"],
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}

# Tiny members of each family: same block types and options, small widths.
_TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny-sd1": {
        "base": "sd15",
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": 4,
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "tiny-sd2": {
        "base": "sd21",
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": [2, 4, 4],
        "cross_attention_dim": 48,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "tiny-sdxl": {
        "base": "sdxl",
        "block_out_channels": [32, 64, 64],
        "attention_head_dim": [2, 4, 8],
        "transformer_layers_per_block": [1, 2, 3],
        "cross_attention_dim": 64,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 40,  # time ids + pooled text width 40
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    # The smallest SD1-style UNet with every kind of part: what CPU tests train.
    "micro-sd1": {
        "base": "sd15",
        "block_out_channels": [16, 32],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": 2,
        "cross_attention_dim": 32,
        "norm_num_groups": 4,
        "sample_size": 16,
    },
}


def unet_preset(name: str) -> dict[str, Any]:
    """A fresh copy of a named diffusers UNet config."""
    if name in _PRESETS:
        return copy.deepcopy(_PRESETS[name])
    if name in _TINY_OVERRIDES:
        overrides = dict(_TINY_OVERRIDES[name])
        return {**unet_preset(overrides.pop("base")), **copy.deepcopy(overrides)}
    raise KeyError(f"unknown UNet preset {name!r}; choose from {preset_names()}")


def preset_names() -> list[str]:
    return [*_PRESETS, *_TINY_OVERRIDES]
