"""The paper's evaluation (Sec. IV-A): 5 images per prompt, scored by HPSv2,
CLIP score, PickScore and the LAION aesthetic model (the same scorers and
weights as configs/preprocess/paper.py), on Pick-a-Pic's validation_unique
split, PartiPrompts and the HPDv2 benchmark. ``:sd15`` (default), ``:sd21`` or
``:sdxl`` set resolution and guidance (7.5 for SD1.5/2.1, 5.0 for SDXL, as the
reference pipelines); 50 steps of the pipeline's own scheduler.

    --config.prompts.pickapic.path=/data/pickapic_v2        # parquet file/dir or save_to_disk dir
    --config.prompts.partiprompts.path=/data/PartiPrompts.tsv
    --config.prompts.hpdv2.path=/data/HPDv2/benchmark        # anime.json, concept-art.json, ...

Sets left without a path are skipped.
"""

import ml_collections

from configs.evaluate.common import base_config, prompt_set
from configs.preprocess import paper as preprocess_paper

PAPER_METRICS = ("hpsv2", "clip", "pickscore", "aesthetic")
GUIDANCE = {"sd15": 7.5, "sd21": 7.5, "sdxl": 5.0}
VARIANTS = preprocess_paper.VARIANTS


def get_config(model: str = "sd15") -> ml_collections.ConfigDict:
    if model not in VARIANTS:
        raise ValueError(f"model {model!r}: choose one of {VARIANTS}")
    config = base_config()
    config.resolution = preprocess_paper.RESOLUTION[model]
    config.sampler.guidance_scale = GUIDANCE[model]
    config.sampler.num_inference_steps = 50
    config.images_per_prompt = 5
    scorers = preprocess_paper.get_config(model).scorers
    known = [n for n in PAPER_METRICS if n in scorers]  # the paper's column order
    for name in known + sorted(set(scorers.keys()) - set(known)):
        config.scorers[name] = scorers[name]
    config.prompts.pickapic = prompt_set("pickapic", split="validation_unique")
    config.prompts.partiprompts = prompt_set("partiprompts")
    config.prompts.hpdv2 = prompt_set("hpdv2")
    if model == "sdxl":
        config.batch_size = 4
    return config
