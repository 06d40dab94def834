"""Stand-ins for what cannot be downloaded here, for the tests and the benches:
procedural preference pairs (prompts like "a red circle on a white background",
images rendered from them with a controllable fidelity, Pick-a-Pic-schema
parquet files) and three weight-free scorers on different scales (saturation
0-1, brightness 0-255, prompt match 0-10), as the real scorers' scales differ.
Importing this module registers the scorers (``configs/preprocess/tiny.py`` and
``configs/evaluate/tiny.py`` import it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from scorers_torch.pickapic import write_pairs
from scorers_torch.scorers.base import Scorer, register_scorer

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "purple": (140, 40, 190),
    "orange": (245, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
# Fraction of its bounding box that each shape fills.
SHAPES: dict[str, float] = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


def random_prompt(rng: np.random.Generator) -> str:
    colour, shape, background = (rng.choice(list(d)) for d in (COLOURS, SHAPES, BACKGROUNDS))
    return f"a {colour} {shape} on a {background} background"


def parse_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, background) named in a prompt, None where absent."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    background = next((w for w, nxt in zip(words, [*words[1:], ""], strict=True) if w in BACKGROUNDS and nxt), None)
    return colour, shape, background


def render(prompt: str, rng: np.random.Generator, fidelity: float, size: int = 64) -> Image.Image:
    """An image of the prompt; lower fidelity drifts the colour, may swap the
    shape, shrinks it and adds noise, so that fidelity orders image quality."""
    colour, shape, background = parse_prompt(prompt)
    target = np.array(COLOURS.get(colour, (128, 128, 128)), float)
    other = np.array(COLOURS[rng.choice(list(COLOURS))], float)
    fill = tuple(int(v) for v in fidelity * target + (1 - fidelity) * other)
    if shape is None or rng.random() > 0.5 + 0.5 * fidelity:
        shape = str(rng.choice(list(SHAPES)))
    image = Image.new("RGB", (size, size), BACKGROUNDS.get(background, (245, 245, 245)))
    draw = ImageDraw.Draw(image)
    half = size * (0.15 + 0.25 * fidelity) * rng.uniform(0.85, 1.15)
    cx, cy = rng.uniform(half, size - half, 2)
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    pixels = np.asarray(image, float) + rng.normal(0, 40 * (1 - fidelity), (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_preference_parquet(
    path: str | os.PathLike,
    num_pairs: int,
    seed: int = 0,
    size: int = 64,
    corrupt_rows: tuple[int, ...] = (),
    empty_caption_rows: tuple[int, ...] = (),
    human_tie_rows: tuple[int, ...] = (),
) -> Path:
    """A Pick-a-Pic v2-schema parquet file (caption, jpg_0, jpg_1, label_0,
    label_1): the human prefers the higher-fidelity image. Listed rows get a
    truncated JPEG, an empty caption or a human tie, to exercise error handling."""
    rng = np.random.default_rng(seed)
    prompts, images_0, images_1, label_0 = [], [], [], []
    for i in range(num_pairs):
        prompt = random_prompt(rng)
        fidelity = rng.uniform(0.0, 1.0, 2)
        images = [jpeg_bytes(render(prompt, rng, f, size)) for f in fidelity]
        if i in corrupt_rows:
            images[1] = images[1][: len(images[1]) // 3]
        prompts.append("" if i in empty_caption_rows else prompt)
        images_0.append(images[0])
        images_1.append(images[1])
        label_0.append(0.5 if i in human_tie_rows else float(fidelity[0] > fidelity[1]))
    write_pairs(path, prompts, images_0, images_1, np.array(label_0))
    return Path(path)


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
