"""The paper's labelling: HPSv2, CLIP score, PickScore and LAION aesthetic on
Pick-a-Pic v2. ``--config configs/preprocess/paper.py:sdxl`` for SDXL's
resolution. Weights default to their hub files (``hf://org/repo/file``), fetched
where the hub is reachable; elsewhere give local paths, e.g.

    --config.scorers.hpsv2.checkpoint=/weights/HPS_v2_compressed.pt
    --config.scorers.aesthetic.head=/weights/sac+logos+ava1-l14-linearMSE.pth

The aesthetic head is not on the hub: download it from
github.com/christophschuhmann/improved-aesthetic-predictor.

yuvalkirstain/pickapic_v2 is reported gone from the hub; a mirror that names
its columns otherwise is read with e.g. ``--config.columns.caption=prompt``.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs.preprocess.common import base_config

RESOLUTION = {"sd15": 512, "sd21": 768, "sdxl": 1024}
VARIANTS = tuple(RESOLUTION)


def get_config(model: str = "sd15") -> ml_collections.ConfigDict:
    if model not in VARIANTS:
        raise ValueError(f"model {model!r}: choose one of {VARIANTS}")
    config = base_config()
    config.source = "hf://yuvalkirstain/pickapic_v2"
    config.resolution = RESOLUTION[model]
    # Four scorers can tie 2-2; the paper does not say, we drop ties by default.
    config.tie_policy = "drop"
    clip_h = "hf://laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    config.scorers.hpsv2 = ml_collections.ConfigDict({"checkpoint": "hf://xswu/HPSv2/HPS_v2_compressed.pt"})
    config.scorers.clip = ml_collections.ConfigDict({"weights": f"{clip_h}/open_clip_pytorch_model.bin"})
    config.scorers.pickscore = ml_collections.ConfigDict(
        {"model": "hf://yuvalkirstain/PickScore_v1", "processor": clip_h}
    )
    config.scorers.aesthetic = ml_collections.ConfigDict(
        {
            "head": placeholder(str),
            "clip_weights": "hf://timm/vit_large_patch14_clip_224.openai/open_clip_pytorch_model.bin",
        }
    )
    return config
