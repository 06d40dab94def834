"""The paper's labelling: HPSv2, CLIP score, PickScore and LAION aesthetic on
Pick-a-Pic v2. ``--config configs/preprocess/paper.py:sdxl`` for SDXL's
resolution. Weight paths must be set, e.g.

    --config.scorers.hpsv2.checkpoint=/weights/HPS_v2_compressed.pt
    --config.scorers.clip.weights=/weights/clip-vit-h-14/open_clip_pytorch_model.bin
    --config.scorers.pickscore.model=/weights/PickScore_v1
    --config.scorers.pickscore.processor=/weights/CLIP-ViT-H-14-laion2B-s32B-b79K
    --config.scorers.aesthetic.head=/weights/sac+logos+ava1-l14-linearMSE.pth
    --config.scorers.aesthetic.clip_weights=/weights/clip-vit-l-14-openai/open_clip_pytorch_model.bin
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs.preprocess.common import base_config

RESOLUTION = {"sd15": 512, "sd21": 768, "sdxl": 1024}


def get_config(model: str = "sd15") -> ml_collections.ConfigDict:
    if model not in RESOLUTION:
        raise ValueError(f"model {model!r}: choose one of {sorted(RESOLUTION)}")
    config = base_config()
    config.source = "yuvalkirstain/pickapic_v2"
    config.resolution = RESOLUTION[model]
    # Four scorers can tie 2-2; the paper does not say, we drop ties by default.
    config.tie_policy = "drop"
    config.scorers.hpsv2 = ml_collections.ConfigDict({"checkpoint": placeholder(str)})
    config.scorers.clip = ml_collections.ConfigDict({"weights": placeholder(str)})
    config.scorers.pickscore = ml_collections.ConfigDict({"model": placeholder(str), "processor": placeholder(str)})
    config.scorers.aesthetic = ml_collections.ConfigDict({"head": placeholder(str), "clip_weights": placeholder(str)})
    return config
