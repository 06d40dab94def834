"""The small world's evaluation (its four scorers and the hidden human, on its test or
validation prompts) as a config file for ``scorers_torch.evaluate``:

    python -m scorers_torch.evaluate --config world/configs/evaluate.py:test \
        --config.models.base=workdirs/world/draw-0/base --config.models.balanced=workdirs/world/draw-0/models/balanced \
        --config.output_dir=/tmp/world-eval
"""

import ml_collections

from world import settings
from world.configs import world

VARIANTS = ("test", "validation")  # the prompt set


def get_config(prompt_set: str = "test") -> ml_collections.ConfigDict:
    config = world.get_config("demo").unlock()
    config.evaluation.prompt_set = prompt_set
    settings.check(config)
    return settings.evaluate_config(config)
