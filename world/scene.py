"""The small world's scene: prompts from a grammar and their split, images
rendered from them, what an image shows, and a hidden "human" preference.

A prompt names four attributes, "a red circle on the left on a white
background"; the renderer draws it at 32 px with natural variation (size,
position, shade), which is what the tiny base model is pretrained on. The
scorers (``world.scorers``) and the hidden human read images
through ``measure``: one segmentation, several properties.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # image side in pixels
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: anti-aliased edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 190),
    "orange": (240, 130, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (238, 238, 238),
    "black": (22, 22, 22),
    "gray": (128, 128, 128),
}
# Fraction of its bounding box a shape fills.
SHAPES: dict[str, float] = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
# Where the object's centre goes, as a fraction of the side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "middle": (0.5, 0.5),
}
PLACE_WORDS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}


@dataclasses.dataclass(frozen=True)
class Attributes:
    colour: str
    shape: str
    position: str
    background: str

    @property
    def prompt(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} {PLACE_WORDS[self.position]} on a {self.background} background"


def all_attributes() -> list[Attributes]:
    return [Attributes(*a) for a in itertools.product(COLOURS, SHAPES, POSITIONS, BACKGROUNDS)]


def vocabulary() -> list[str]:
    """Every word a prompt can use (the tiny tokenizer makes each one token)."""
    words = {w for a in all_attributes() for w in a.prompt.split()}
    return sorted(words)


def parse_prompt(prompt: str) -> Attributes | None:
    """The attributes a prompt names, or None if it is not one of the grammar's."""
    words = prompt.lower().split()
    found = {}
    for key, names in (("colour", COLOURS), ("shape", SHAPES), ("position", POSITIONS), ("background", BACKGROUNDS)):
        hits = [w for w in words if w in names]
        if len(hits) != 1:
            return None
        found[key] = hits[0]
    return Attributes(**found)


SPLIT_SEED = 0
# The grammar's 270 prompts in three parts, drawn once: the base (its VAE, its pretraining) and the preference
# pairs see only training prompts; every setting (learning rate, beta, T, steps, guidance) is chosen on the
# validation prompts; the test prompts serve only the reported tables.
TEST_PROMPTS = 60
VALIDATION_PROMPTS = 40
PROMPT_SETS = ("train", "validation", "test")


def split_prompts() -> dict[str, list[str]]:
    """{"train", "validation", "test"}: the grammar's prompts in three fixed parts, each sorted.
    One permutation of the grammar (seeded by ``SPLIT_SEED``) is cut test first, then validation."""
    prompts = [a.prompt for a in all_attributes()]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(prompts))
    cut = (TEST_PROMPTS, TEST_PROMPTS + VALIDATION_PROMPTS)
    parts = {"test": order[: cut[0]], "validation": order[cut[0] : cut[1]], "train": order[cut[1] :]}
    return {name: sorted(prompts[i] for i in parts[name]) for name in PROMPT_SETS}


def render(attributes: Attributes, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """One image of the prompt, as the pretraining data has it: the object's
    half-side, position and shade vary; edges are anti-aliased."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[attributes.background])
    shade = rng.uniform(0.85, 1.1)
    fill = tuple(int(np.clip(c * shade, 0, 255)) for c in COLOURS[attributes.colour])
    half = big * rng.uniform(0.16, 0.24)
    fx, fy = POSITIONS[attributes.position]
    cx, cy = (np.array([fx, fy]) + rng.uniform(-0.06, 0.06, 2)) * big
    draw = ImageDraw.Draw(image)
    box = (cx - half, cy - half, cx + half, cy + half)
    if attributes.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif attributes.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image.resize((size, size), Image.BOX)


@dataclasses.dataclass(frozen=True)
class Reading:
    """What an image shows, by one segmentation: the background is the border's
    median colour, the foreground every pixel far from it, the object the
    foreground's largest 4-connected part; foreground elsewhere is clutter."""

    background: np.ndarray  # (3,) RGB
    object_mask: np.ndarray  # (H, W) bool
    object_colour: np.ndarray  # (3,) mean RGB of the object (the background's if there is none)
    area: float  # object's fraction of the image
    centre: np.ndarray  # (x, y) of the object's centroid, as fractions of the side
    fill: float  # object's fraction of its bounding box
    touches_border: bool
    clutter: float  # foreground outside the object, as a fraction of the image
    background_noise: float  # RGB std of the background pixels away from the object


FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as foreground


def _grow(mask: np.ndarray) -> np.ndarray:
    """One step of 4-neighbour dilation."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def largest_part(mask: np.ndarray) -> np.ndarray:
    """The 4-connected part of ``mask`` around its densest pixel (for one
    object and a few specks, the largest part)."""
    if not mask.any():
        return mask
    padded = np.pad(mask.astype(np.int32), 2)
    density = sum(padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] for dy in range(5) for dx in range(5))
    part = np.zeros_like(mask)
    part.flat[np.argmax(np.where(mask, density, -1))] = True
    while True:
        grown = _grow(part) & mask
        if (grown == part).all():
            return part
        part = grown


def measure(image: Image.Image) -> Reading:
    pixels = np.asarray(image.convert("RGB"), np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    obj = largest_part(foreground)
    h, w = obj.shape
    rows, cols = np.nonzero(obj)
    if len(rows) >= 4:
        object_colour = pixels[obj].mean(0)
        centre = np.array([(cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h])
        fill = len(rows) / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
        touches = bool(obj[0].any() or obj[-1].any() or obj[:, 0].any() or obj[:, -1].any())
        area = len(rows) / (h * w)
    else:
        object_colour, centre, fill, touches, area = background.copy(), np.array([0.5, 0.5]), 0.0, False, 0.0
        obj = np.zeros_like(obj)
    # Background pixels at least 2 px from any foreground: anti-aliased edges are not noise.
    rest = pixels[~_grow(_grow(foreground))]
    noise = float(rest.std(0).mean()) if len(rest) > 8 else 0.0
    clutter = float((foreground & ~obj).sum() / (h * w))
    return Reading(background, obj, object_colour, area, centre, float(fill), touches, clutter, noise)


def colour_distance(a: np.ndarray, b) -> float:
    """RGB distance scaled to [0, 1] (1: black to white)."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)) / (255 * np.sqrt(3)))


def saturation(rgb: np.ndarray) -> float:
    """HSV saturation of one RGB colour, 0 to 1."""
    high, low = float(np.max(rgb)), float(np.min(rgb))
    return 0.0 if high <= 0 else (high - low) / high


def human_utility(reading: Reading, prompt: str) -> float:
    """The hidden "human" taste, none of the scorers: mostly the right shape and
    colour, then a whole object (not cut by the frame) of a generous size, and
    no speckle. Pairs get a Bradley-Terry draw on the difference (``human_prefers``)."""
    attributes = parse_prompt(prompt)
    if attributes is None or reading.area == 0:
        return 0.0
    shape = max(0.0, 1.0 - abs(reading.fill - SHAPES[attributes.shape]) / 0.25)
    colour = max(0.0, 1.0 - colour_distance(reading.object_colour, COLOURS[attributes.colour]) / 0.3)
    place = max(0.0, 1.0 - np.linalg.norm(reading.centre - POSITIONS[attributes.position]) / 0.3)
    size = max(0.0, 1.0 - abs(reading.area - 0.16) / 0.16)
    clean = max(0.0, 1.0 - reading.background_noise / 20.0 - 10.0 * reading.clutter)
    return 3.0 * shape + 3.0 * colour + 1.0 * place + 1.0 * size + 1.0 * clean - 2.0 * reading.touches_border


def human_prefers(utility_0: np.ndarray, utility_1: np.ndarray, rng: np.random.Generator, temperature: float = 0.5):
    """label_0 of Pick-a-Pic: 1 where the human picks image 0, by a Bradley-Terry draw."""
    p0 = 1.0 / (1.0 + np.exp(-(np.asarray(utility_0) - np.asarray(utility_1)) / temperature))
    return (rng.random(p0.shape) < p0).astype(np.float32)
