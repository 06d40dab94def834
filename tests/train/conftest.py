"""A small preprocessing cache (micro UNet, demo scorers), built once per session."""

import pytest
from train_fixtures import tiny_train_config

from configs.preprocess import demo
from scorers_torch import preprocess
from scorers_torch.synthetic import make_preference_parquet
from scorers_torch.tiny_models import make_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    pipeline = make_tiny_pipeline(root / "pipeline", "sd", unet_preset_name="micro-sd1")
    config = demo.get_config()
    config.source = str(make_preference_parquet(root / "pairs.parquet", 48, seed=1, size=64))
    config.base_model = str(pipeline)
    config.output_dir = str(root / "cache")
    config.shard_size = 16
    preprocess.run(config)
    return root / "cache"


@pytest.fixture
def train_config(tiny_cache):
    return tiny_train_config(tiny_cache)
