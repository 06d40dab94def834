"""A few steps on CPU over a small cache, for the tests and the launchers'
examples (the small world's runs are world/configs/train.py)."""

import ml_collections

from configs.train.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.dtype = "float32"
    config.train.steps = 20
    config.train.global_batch = 8
    config.train.beta = 500.0
    config.train.ref_refresh_every = 10
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_steps = 2
    config.checkpoint.every = 10
    config.log_every = 5
    return config
