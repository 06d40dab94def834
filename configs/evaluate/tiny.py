"""A CPU-sized evaluation of tiny pipelines for the tests and bench/evaluate.py:
16 procedural prompts, 5 images each, scored by the three weight-free scorers
of ``configs/preprocess/tiny.py`` (saturation, brightness, prompt match;
``scorers_torch.testing``), 20 DDIM steps.

    python -m scorers_torch.evaluate --config configs/evaluate/tiny.py \
        --config.models.base=PIPELINE_DIR --config.models.trained=EXPORTED_DIR --config.output_dir=OUT
"""

import itertools

import ml_collections

from configs.evaluate.common import base_config, prompt_set
from scorers_torch.testing import BACKGROUNDS, COLOURS, SHAPES


def shape_prompts(count: int = 16) -> tuple[str, ...]:
    """Evenly spread over the colour x shape x background combinations of the procedural pairs."""
    combos = list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))
    step = len(combos) / count
    return tuple(f"a {c} {s} on a {b} background" for c, s, b in (combos[int(i * step)] for i in range(count)))


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.prompts.shapes = prompt_set("inline", prompts=shape_prompts(16))
    for name in ("saturation", "brightness", "prompt_match"):
        config.scorers[name] = ml_collections.ConfigDict()
    config.sampler.num_inference_steps = 20
    config.sampler.scheduler = "DDIMScheduler"
    config.batch_size = 16
    # On a 2-core machine shared with other jobs, one thread ran this evaluation
    # 8x faster than torch's default two (bench/evaluate.py: 33 s against 266 s).
    config.cpu_threads = 1
    config.block_size = 16
    config.bootstrap.resamples = 1000
    config.grid.prompts = 8
    config.grid.cell_size = 128
    return config
