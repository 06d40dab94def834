"""The small world's preprocessing (its four voting scorers) as a config file for
``scorers_torch.preprocess``:

    python -m scorers_torch.preprocess --config world/configs/preprocess.py \
        --config.source=workdirs/world/draw-0/pairs/pairs.parquet --config.base_model=workdirs/world/draw-0/base \
        --config.output_dir=/tmp/world-cache
"""

import ml_collections

from world import settings


def get_config() -> ml_collections.ConfigDict:
    return settings.preprocess_config()
