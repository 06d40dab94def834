"""The built-in demo: procedurally rendered pairs labelled by three weight-free
scorers on different scales (saturation 0-1, brightness 0-255, prompt match
0-10); three voters never tie."""

import ml_collections

from configs.preprocess.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.scorers.saturation = ml_collections.ConfigDict()
    config.scorers.brightness = ml_collections.ConfigDict()
    config.scorers.prompt_match = ml_collections.ConfigDict()
    config.shard_size = 64
    config.batch_size = 16
    return config
