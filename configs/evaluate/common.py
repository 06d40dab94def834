"""Settings every evaluation config shares; the files beside this one fill in
the prompt sets, the scorers and the sampler's defaults.

Models come from the command line (``--config.models.NAME=DIR``, in order) or,
from Python, ``config.models.NAME = DIR`` in order. Models, prompt sets and
scorers keep the order they are given in: it is the tables' order. Locked
(``configs/lock.py``) but for ``OPEN_MAPS``; each prompt set has the keys of
``prompt_set``.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs.lock import locked

OPEN_MAPS = ("models", "prompts", "scorers")  # filled by config files and users, in order


def ordered() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(sort_keys=False)


def prompt_set(kind: str, **values) -> ml_collections.ConfigDict:
    """One prompt set; every key present, so that any can be set from the command line."""
    spec = ml_collections.ConfigDict()
    spec.kind = kind  # pickapic | partiprompts | hpdv2 | lines | inline (scorers_torch/evaluation/prompts.py)
    spec.path = placeholder(str)
    spec.column = placeholder(str)  # default: caption (pickapic), Prompt (partiprompts)
    spec.split = placeholder(str)  # pickapic: default validation_unique
    spec.limit = placeholder(int)  # a fixed random subset of this many prompts
    spec.sample_seed = 0
    spec.prompts = placeholder(tuple)  # inline
    spec.lock().update(values)
    return spec


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.models = ordered()  # name -> diffusers pipeline directory
    config.comparisons = placeholder(str)  # "A:B,C:B" or "*:B"; default: each model vs each named before it
    config.allow_mixed_families = False  # compare e.g. SD1.5 with SDXL (unpaired noise)
    config.prompts = ordered()  # name -> prompt_set(...); sets without a path are skipped
    config.scorers = ordered()  # registry name -> constructor arguments (as preprocessing)
    config.output_dir = placeholder(str)

    config.images_per_prompt = 5  # N of best-of-N
    config.statistic = "best"  # per prompt, what win rates compare: best (the paper's) or mean of the N images
    config.seed = 0  # image i of prompt p: a seed from (seed, prompt set, p, i), the same in every model
    config.sampler = ml_collections.ConfigDict()
    config.sampler.guidance_scale = 7.5
    config.sampler.num_inference_steps = 50
    config.sampler.scheduler = placeholder(str)  # a diffusers scheduler class; default: the pipeline's
    config.resolution = placeholder(int)  # default: each UNet's sample_size times its VAE factor
    config.dtype = "auto"  # auto (float16 on GPU, float32 on CPU) | float32 | float16 | bfloat16

    config.batch_size = 8  # images per pipeline call
    config.score_batch_size = 32
    config.block_size = 64  # prompts per resume unit (and per work item)
    config.worker_index = 0  # several hosts without torchrun: one index per host
    config.num_workers = 1
    config.device = placeholder(str)  # default: cuda (LOCAL_RANK under torchrun) when present, else cpu
    config.cpu_threads = placeholder(int)  # torch's CPU threads during the run; None or 0: torch's choice

    config.bootstrap = ml_collections.ConfigDict()
    config.bootstrap.resamples = 1000
    config.bootstrap.confidence = 0.95
    config.bootstrap.seed = 0

    config.grid = ml_collections.ConfigDict()
    config.grid.prompts = 6  # rows of the grid picture
    config.grid.seed = 0  # which prompts
    config.grid.image_index = 0  # which of the N images (the same seed in every column)
    config.grid.cell_size = 256
    return locked(config, OPEN_MAPS)
