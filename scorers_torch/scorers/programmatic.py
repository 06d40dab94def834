"""Scorers that need no weights, for the built-in demo: image statistics and
how well a procedurally rendered image matches its prompt. Their scales differ
on purpose (0-1, 0-255, 0-10), as the real scorers' do."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from scorers_torch.scorers.base import Scorer, register_scorer
from scorers_torch.synthetic import BACKGROUNDS, COLOURS, SHAPES, parse_prompt


@register_scorer("saturation")
class Saturation(Scorer):
    """Mean HSV saturation, 0 to 1."""

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return np.array([np.asarray(im.convert("HSV"), np.float32)[..., 1].mean() / 255 for im in images], np.float32)


@register_scorer("brightness")
class Brightness(Scorer):
    """Mean luma, 0 to 255."""

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return np.array([np.asarray(im.convert("L"), np.float32).mean() for im in images], np.float32)


@register_scorer("prompt_match")
class PromptMatch(Scorer):
    """0 to 10: half for the foreground's colour against the prompt's colour,
    half for how much of its bounding box the foreground fills against the
    prompt's shape (circle pi/4, square 1, triangle 1/2)."""

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return np.array([self._match(im, p) for im, p in zip(images, prompts, strict=True)], np.float32)

    @staticmethod
    def _match(image: Image.Image, prompt: str) -> float:
        colour, shape, background = parse_prompt(prompt)
        pixels = np.asarray(image.convert("RGB"), np.float32)
        if background in BACKGROUNDS:
            back = np.array(BACKGROUNDS[background], np.float32)
        else:  # the border's median colour
            border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
            back = np.median(border, axis=0)
        foreground = np.linalg.norm(pixels - back, axis=-1) > 60
        if foreground.sum() < 4:
            return 0.0
        colour_score = 0.0
        if colour is not None:
            distance = np.linalg.norm(pixels[foreground].mean(0) - np.array(COLOURS[colour], np.float32))
            colour_score = max(0.0, 1.0 - distance / 255.0)
        shape_score = 0.0
        if shape is not None:
            rows, cols = np.nonzero(foreground)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            shape_score = max(0.0, 1.0 - abs(foreground.sum() / box - SHAPES[shape]) / 0.5)
        return 5.0 * colour_score + 5.0 * shape_score
