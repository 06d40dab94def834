"""Every image of a block scored by every configured scorer (the registry
preprocessing uses), one row per image, written as the block's parquet file.
A block scored before by fewer scorers gets only the missing columns."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np
import pyarrow as pa

from bdpo_jax.errors import UserError
from scorers_torch.evaluation.blocks import Block, ImageRow
from scorers_torch.evaluation.outputs import (
    ROW_COLUMNS,
    OutputDir,
    read_image,
    read_table,
    table_columns,
    write_table,
)
from scorers_torch.scorers import Scorer, build_scorer
from scorers_torch.threads import thread_map


class ScorerConfigError(UserError):
    """A configured scorer is unknown or given arguments it does not take."""


def build_scorers(scorers: ml_collections.ConfigDict, device: str | None) -> dict[str, Scorer]:
    built = {}
    for name, kwargs in scorers.items():
        try:
            built[name] = build_scorer(name, device=device, **dict(kwargs))
        except (KeyError, TypeError) as e:
            raise ScorerConfigError(f"scorer {name!r} (--config.scorers.{name}): {e.args[0]}") from e
    return built


def is_scored(out: OutputDir, block: Block, metrics: Sequence[str]) -> bool:
    return set(metrics) <= set(table_columns(out.unit_scores(block.prompt_set, block.model, block.index)))


def score_block(
    block: Block, rows: list[ImageRow], scorers: dict[str, Scorer], out: OutputDir, batch_size: int
) -> None:
    path = out.unit_scores(block.prompt_set, block.model, block.index)
    table = read_table(path)
    if table is not None and table.num_rows != len(rows):
        table = None  # not this block's rows: score it anew
    missing = [name for name in scorers if table is None or name not in table.column_names]
    if not missing:
        return
    if table is None:
        columns = {
            "model": [block.model] * len(rows),
            "prompt_set": [block.prompt_set] * len(rows),
            "prompt_index": pa.array([r.prompt_index for r in rows], pa.int64()),
            "image_index": pa.array([r.image_index for r in rows], pa.int32()),
            "seed": pa.array([r.seed for r in rows], pa.int64()),
            "prompt": [r.prompt for r in rows],
            "image": [out.relative(r.path) for r in rows],
        }
        table = pa.table({name: columns[name] for name in ROW_COLUMNS})
    values: dict[str, list[np.ndarray]] = {name: [] for name in missing}
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        images = thread_map(read_image, [r.path for r in batch])
        for name in missing:
            values[name].append(np.asarray(scorers[name].score(images, [r.prompt for r in batch]), np.float32))
    for name in missing:
        table = table.append_column(name, pa.array(np.concatenate(values[name])))
    write_table(table, path)
