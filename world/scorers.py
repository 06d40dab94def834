"""The small world's scorers: weight-free, each measuring a different property on
its own scale, as the paper's four do (a cosine near 0.3, an aesthetic near 5),
and built to disagree:

- ``fidelity``    in [0, 1]:   the prompt's colour, shape, place and background (the CLIP-score role)
- ``composition`` in [0, 10]:  a small, centred object on a clean background (the aesthetic role)
- ``contrast``    in [0, 441]: RGB distance between object and background
- ``vividness``   in [0, 100]: the object's saturation, in percent

Each rewards a well-formed object (a smeared or speckled sample loses on all),
and each trade-off has a scorer on either side: a prompt that asks for the left
wants what ``composition`` marks down (off centre); shading the object away
from the background raises ``contrast`` and lowers ``fidelity``'s colour term
(and, lightening on black, ``vividness``); saturating it raises ``vividness``
and lowers ``fidelity``. What was not built in: on the base's own samples a
confidently drawn object is larger, more saturated and more contrasted at
once, so ``contrast``, ``fidelity`` and ``vividness`` prefer the larger of two
objects and ``composition`` alone the smaller; a majority vote then grows
objects and ``composition`` loses (``world.diagnosis.size_preferences``; README).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from scorers_torch.scorers.base import Scorer, register_scorer
from world.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    Reading,
    colour_distance,
    human_utility,
    measure,
    parse_prompt,
    saturation,
)


@functools.lru_cache(maxsize=4096)
def _reading(pixels: bytes, size: tuple[int, int]) -> Reading:
    return measure(Image.frombytes("RGB", size, pixels))


def read(image: Image.Image) -> Reading:
    """``world.scene.measure``, once per image however many scorers ask (keyed by its pixels)."""
    image = image.convert("RGB")
    return _reading(image.tobytes(), image.size)


class ReadingScorer(Scorer):
    """A scorer that is a formula of ``world.scene.measure``'s reading and the prompt."""

    formula: Callable[[Reading, str], float]

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return np.array([self.formula(read(im), p) for im, p in zip(images, prompts, strict=True)], np.float32)


def _closeness(value: float, target: float, tolerance: float) -> float:
    """1 at the target, falling linearly to 0 at ``tolerance`` away."""
    return max(0.0, 1.0 - abs(value - target) / tolerance)


@register_scorer("fidelity")
class Fidelity(ReadingScorer):
    """Mean of four terms in [0, 1]: object colour, shape (bounding-box fill),
    place (centroid) and background colour against the prompt's."""

    @staticmethod
    def formula(reading: Reading, prompt: str) -> float:
        attributes = parse_prompt(prompt)
        if attributes is None or reading.area == 0:
            return 0.0
        colour = 1.0 - colour_distance(reading.object_colour, COLOURS[attributes.colour])
        shape = _closeness(reading.fill, SHAPES[attributes.shape], 0.5)
        place = 1.0 - np.linalg.norm(reading.centre - POSITIONS[attributes.position]) / np.sqrt(2)
        background = 1.0 - colour_distance(reading.background, BACKGROUNDS[attributes.background])
        return float(np.mean([colour, shape, place, background]))


@register_scorer("composition")
class Composition(ReadingScorer):
    """0 to 10: 4 for a centred object, 3 for a roomy one (7% of the frame),
    3 for a clean background (no specks, no noise)."""

    @staticmethod
    def formula(reading: Reading, prompt: str) -> float:
        if reading.area == 0:
            return 0.0
        centred = max(0.0, 1.0 - np.linalg.norm(reading.centre - 0.5) / 0.35)
        roomy = _closeness(reading.area, 0.07, 0.1)
        clean = max(0.0, 1.0 - reading.background_noise / 15.0 - 10.0 * reading.clutter)
        return 4.0 * centred + 3.0 * roomy + 3.0 * clean


@register_scorer("contrast")
class Contrast(ReadingScorer):
    """RGB distance between the object's mean colour and the background, 0 to 441."""

    @staticmethod
    def formula(reading: Reading, prompt: str) -> float:
        return float(np.linalg.norm(reading.object_colour - reading.background))


@register_scorer("vividness")
class Vividness(ReadingScorer):
    """The HSV saturation of the object's mean colour, in percent (0 with no object)."""

    @staticmethod
    def formula(reading: Reading, prompt: str) -> float:
        return 100.0 * saturation(reading.object_colour) if reading.area > 0 else 0.0


@register_scorer("world_human")
class WorldHuman(ReadingScorer):
    """The hidden "human" utility (``world.scene.human_utility``): the evaluation's
    stand-in for a human study. No vote sees it; Diffusion-DPO's labels are drawn from it."""

    @staticmethod
    def formula(reading: Reading, prompt: str) -> float:
        return human_utility(reading, prompt)
