"""A small-world training run as a config file for ``bdpo_jax.train``: the pretraining
of a draw's base, or one variant of the paper's tables (``world.settings.VARIANTS``),
with the world's settings (world.py, demo size).

    python -m bdpo_jax.train --config world/configs/train.py:balanced --workdir runs/balanced \
        --config.cache=workdirs/world/draw-0/pairs/cache
"""

import ml_collections

from world import settings
from world.configs import world

VARIANTS = ("pretrain", *settings.VARIANTS)


def get_config(variant: str = "balanced") -> ml_collections.ConfigDict:
    if variant == "pretrain":
        return settings.pretrain_config(world.get_config("demo"))
    return settings.train_config(world.get_config("demo"), variant)
