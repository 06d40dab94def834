"""Procedural preference data: prompts like "a red circle on a white background",
images rendered from them with a controllable fidelity, and Pick-a-Pic-schema
parquet files of pairs. The built-in demo and the tests use it in place of
Pick-a-Pic, which cannot be downloaded here.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(num_pairs):
        prompt = random_prompt(rng)
        fidelity = rng.uniform(0.0, 1.0, 2)
        images = [jpeg_bytes(render(prompt, rng, f, size)) for f in fidelity]
        if i in corrupt_rows:
            images[1] = images[1][: len(images[1]) // 3]
        label_0 = 0.5 if i in human_tie_rows else float(fidelity[0] > fidelity[1])
        rows["caption"].append("" if i in empty_caption_rows else prompt)
        rows["jpg_0"].append(images[0])
        rows["jpg_1"].append(images[1])
        rows["label_0"].append(label_0)
        rows["label_1"].append(1.0 - label_0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path
