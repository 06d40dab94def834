"""Config helpers shared by the train tests (imported, not collected)."""

from configs.train import tiny


def tiny_train_config(cache, **train_overrides):
    """The tiny train config on a cache, 4 pairs per step."""
    config = tiny.get_config()
    config.cache = str(cache)
    config.train.global_batch = 4
    config.train.update(train_overrides)
    return config
