"""Settings every preprocessing config shares; the files beside this one fill in
the scorers and the base model. Locked (``configs/lock.py``) but for ``OPEN_MAPS``."""

import ml_collections
from ml_collections.config_dict import placeholder

from configs.lock import locked
from scorers_torch.pickapic import COLUMNS, MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS

OPEN_MAPS = ("columns", "scorers")  # filled by config files and users


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.source = placeholder(str)  # parquet file/dir, save_to_disk dir, or hub dataset id
    config.split = "train"
    # The source's column for each field of the Pick-a-Pic v2 schema (a mirror may rename them).
    config.columns = ml_collections.ConfigDict({name: name for name in COLUMNS})
    config.limit = placeholder(int)  # first N rows only
    config.drop_human_ties = True  # as Diffusion-DPO: label_0 == 0.5 pairs are skipped
    config.base_model = placeholder(str)  # diffusers pipeline dir: its vae/ and text encoder(s)
    config.resolution = placeholder(int)  # default: the UNet's sample_size times the VAE factor
    # Images whose header promises more pixels, or a thinner shape, are rejected and listed
    # before decoding: memory stays bounded whatever the file (a 1 KB PNG can claim 1 x 400,000).
    config.max_image_pixels = MAX_IMAGE_PIXELS
    config.max_aspect_ratio = MAX_ASPECT_RATIO
    config.tie_policy = "drop"  # "drop" | "human" | "zero" (ties need an even number of scorers)
    # name -> constructor arguments. ConfigDict keeps names sorted: the cache's score
    # columns follow the manifest's "scorers" list.
    config.scorers = ml_collections.ConfigDict()
    config.output_dir = placeholder(str)
    config.shard_size = 1024
    config.batch_size = 32
    config.worker_index = 0  # several hosts without torchrun: one index per host
    config.num_workers = 1
    config.device = placeholder(str)  # default: cuda (LOCAL_RANK under torchrun) when present, else cpu
    return locked(config, OPEN_MAPS)
