"""The evaluation's work, cut into blocks: ``block_size`` prompts of one set,
all N images of one model. A block is the unit of the worker split and of
resume (its scores are written whole); within a block, images are made in
fixed batches, so that a resumed run calls the pipeline on the same batches as
an uninterrupted one (on a CPU, the same bits)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from scorers_torch.evaluation.generate import image_seed
from scorers_torch.evaluation.outputs import Location, OutputDir
from scorers_torch.evaluation.prompts import PromptSet


@dataclasses.dataclass(frozen=True)
class Block:
    prompt_set: str
    model: str
    index: int
    positions: range  # positions in the prompt set


@dataclasses.dataclass(frozen=True)
class ImageRow:
    prompt_index: int
    image_index: int
    seed: int
    prompt: str
    path: Location


def plan(sets: dict[str, PromptSet], models: Sequence[str], block_size: int) -> list[Block]:
    return [
        Block(name, model, k, range(start, min(start + block_size, len(prompt_set))))
        for name, prompt_set in sets.items()
        for model in models
        for k, start in enumerate(range(0, len(prompt_set), block_size))
    ]


def block_rows(
    block: Block, prompt_set: PromptSet, out: OutputDir, images_per_prompt: int, run_seed: int
) -> list[ImageRow]:
    rows = []
    for position in block.positions:
        prompt_index, prompt = prompt_set.indices[position], prompt_set.texts[position]
        for image_index in range(images_per_prompt):
            seed = image_seed(run_seed, block.prompt_set, prompt_index, image_index)
            path = out.image(block.prompt_set, block.model, prompt_index, seed)
            rows.append(ImageRow(prompt_index, image_index, seed, prompt, path))
    return rows


def batches_to_make(rows: list[ImageRow], batch_size: int, existing: set[str]) -> list[list[ImageRow]]:
    """The batches (a fixed partition of the block's rows) that miss an image (``existing``: the
    paths made); each is made whole."""
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    return [batch for batch in batches if not all(os.fspath(r.path) in existing for r in batch)]
