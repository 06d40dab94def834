"""A CPU-sized labelling for the tests and benches: procedural pairs
(``scorers_torch.testing``) labelled by its three weight-free scorers on
different scales (saturation 0-1, brightness 0-255, prompt match 0-10); three
voters never tie."""

import ml_collections

import scorers_torch.testing  # noqa: F401  (registers the three scorers)
from configs.preprocess.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.scorers.saturation = ml_collections.ConfigDict()
    config.scorers.brightness = ml_collections.ConfigDict()
    config.scorers.prompt_match = ml_collections.ConfigDict()
    config.shard_size = 64
    config.batch_size = 16
    return config
