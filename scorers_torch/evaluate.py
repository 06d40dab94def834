"""Evaluation as in the paper (Sec. IV-A): N images per prompt from every model,
seeds shared across models; every image scored by every scorer; per prompt and
metric the best of N (or, ``--config.statistic=mean``, their mean); win rates
of A over B with bootstrap intervals; grids,
HTML pages and charts.

    python -m scorers_torch.evaluate --config configs/evaluate/paper.py:sd15 \\
        --config.models.base=/models/sd15 --config.models.balanced=/models/sd15-bdpo \\
        --config.prompts.pickapic.path=/data/pickapic_v2 --config.output_dir=/evals/sd15
    torchrun --nproc_per_node 8 -m scorers_torch.evaluate ...   # one worker per GPU

Models are named on the command line in order (``--config.models.NAME=DIR``);
by default each is compared with every model named before it, or
``--config.comparisons=balanced:base,dpo:base`` (``*:base``: every other model
against base). From Python: ``run(config) -> Results``.

The work is split into blocks of ``block_size`` prompts per model and set;
block k belongs to worker ``k % num_workers``, as in preprocessing. Images are
saved as they are made and a block's scores are written whole, so a killed run,
run again, skips what is on disk. The worker that finds every block done writes
scores.parquet, the tables and the pictures; with every image and score on
disk, a run with other comparisons only recomputes the tables. A second
evaluation into an output folder that one is writing is refused, naming it
(``evaluate-worker-K.lock``, one per worker, as a train workdir's lock).
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import pyarrow as pa
from absl import flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from bdpo_jax import errors, storage
from bdpo_jax.errors import UserError
from bdpo_jax.workdir import acquire_lock, release_lock
from scorers_torch.evaluation import pictures, report, stats
from scorers_torch.evaluation.blocks import batches_to_make, block_rows, plan
from scorers_torch.evaluation.generate import (
    DTYPES,
    check_comparable,
    describe_model,
    generate,
    load_pipeline,
    resolve_dtype,
)
from scorers_torch.evaluation.outputs import ROW_COLUMNS, Location, OutputDir, read_table, save_image, write_table
from scorers_torch.evaluation.prompts import PromptSet, load_prompt_set
from scorers_torch.evaluation.scoring import build_scorers, is_scored, score_block
from scorers_torch.threads import torch_threads
from scorers_torch.workers import worker_device, worker_from_env

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SEED_RULE = "SeedSequence([seed, crc32(prompt_set), prompt_index, image_index]), 31 bits; torch CPU randn, float32"


class EvaluationConfigError(UserError):
    """A config value is missing or out of range."""


@dataclasses.dataclass(frozen=True)
class Results:
    tables: stats.Tables
    text: str  # the win-rate table as printed
    output_dir: Location  # a Path, or a URL in object storage
    scores: Location  # scores.parquet: every image's scores
    files: dict[str, Location]  # tables.md, win_rates.csv, model_scores.csv, results.json
    grids: dict[str, Location]  # per prompt set
    pages: dict[str, Location]
    charts: dict[str, Location]


def check_config(config: ml_collections.ConfigDict) -> None:
    """Everything that can be checked before a file is read."""

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise EvaluationConfigError(message)

    require(bool(config.output_dir), "set --config.output_dir: where images, scores and tables go")
    require(len(config.models) > 0, "name at least one model: --config.models.NAME=PIPELINE_DIR")
    for kind, names in (("model", config.models.keys()), ("prompt set", config.prompts.keys())):
        for name in names:
            require(bool(NAME.match(name)), f"{kind} name {name!r}: use letters, digits and _ . + - only")
    for name, path in config.models.items():
        require(isinstance(path, str | os.PathLike) and bool(str(path)), f"model {name!r}: give its pipeline directory")
    require(len(config.scorers) > 0, "config.scorers is empty: name at least one scorer")
    require(config.images_per_prompt >= 1, "images_per_prompt must be at least 1")
    require(
        config.statistic in stats.STATISTICS,
        f"statistic {config.statistic!r}: best (the paper's best of N per prompt) or mean (the mean of N)",
    )
    counts = {
        "batch_size": config.batch_size,
        "score_batch_size": config.score_batch_size,
        "block_size": config.block_size,
        "sampler.num_inference_steps": config.sampler.num_inference_steps,
        "bootstrap.resamples": config.bootstrap.resamples,
    }
    for key, value in counts.items():
        require(value >= 1, f"{key} must be at least 1 (is {value})")
    require(config.sampler.guidance_scale >= 0, "sampler.guidance_scale must be >= 0")
    require(config.dtype in ("auto", *DTYPES), f"dtype {config.dtype!r}: one of {('auto', *DTYPES)}")
    require((config.cpu_threads or 0) >= 0, "cpu_threads must be >= 0 (0 or None: torch's choice)")
    require(0 < config.bootstrap.confidence < 1, "bootstrap.confidence must be between 0 and 1")
    require(
        0 <= config.grid.image_index < config.images_per_prompt,
        f"grid.image_index must be below images_per_prompt ({config.images_per_prompt})",
    )
    require(config.grid.prompts >= 1 and config.grid.cell_size >= 16, "grid.prompts >= 1 and grid.cell_size >= 16")
    parse_comparisons(config.comparisons, list(config.models.keys()))


def parse_comparisons(spec: str | None, models: Sequence[str]) -> list[tuple[str, str]]:
    """``"A:B,C:B"`` (``*:B``: every other model against B); default: each model against each named before it."""
    if not spec:
        return [(a, b) for i, a in enumerate(models) for b in models[:i]]
    pairs: list[tuple[str, str]] = []
    for item in spec.split(","):
        a, sep, b = item.strip().partition(":")
        if not sep:
            raise EvaluationConfigError(f"comparison {item!r}: write A:B (A's win rate over B)")
        for name in (a, b):
            if name != "*" and name not in models:
                raise EvaluationConfigError(f"comparison {item!r}: no model named {name!r}; models: {list(models)}")
        if b == "*":
            raise EvaluationConfigError(f"comparison {item!r}: the wildcard goes first (*:B)")
        pairs += [(m, b) for m in models if m != b] if a == "*" else [(a, b)]
    return list(dict.fromkeys(pairs))


def load_prompt_sets(config: ml_collections.ConfigDict) -> dict[str, PromptSet]:
    sets, skipped = {}, []
    for name, spec in config.prompts.items():
        if spec.kind != "inline" and not spec.get("path"):
            skipped.append(name)
            continue
        sets[name] = load_prompt_set(name, spec)
    if skipped:
        logging.warning("prompt sets without a path, skipped: %s", skipped)
    if not sets:
        keys = ", ".join(f"--config.prompts.{n}.path" for n in config.prompts)
        raise EvaluationConfigError(f"no prompt set to evaluate on: set {keys or 'config.prompts'}")
    return sets


def environment(device: Any) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "device": str(device), "gpu": gpu}  # fmt: skip


def run(config: ml_collections.ConfigDict) -> Results | None:
    """This worker's share of the evaluation; the tables once every block is done (None before). One
    evaluation's worker k at a time per output folder: a second would redo the same work beside it."""
    check_config(config)
    worker, num_workers = worker_from_env(config)
    lock = acquire_lock(
        OutputDir(config.output_dir).root, f"evaluate-worker-{worker}.lock", "evaluation", "--config.output_dir"
    )
    try:
        with torch_threads(config.cpu_threads):
            return _run(config, worker, num_workers)
    finally:
        release_lock(lock)


def _run(config: ml_collections.ConfigDict, worker: int, num_workers: int) -> Results | None:
    import torch

    out = OutputDir(config.output_dir)
    device = torch.device(worker_device(config) or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(config.dtype, device)

    models = {name: describe_model(name, str(path), config.resolution) for name, path in config.models.items()}
    comparisons = parse_comparisons(config.comparisons, list(models))
    for a, b in comparisons:
        check_comparable(models[a], models[b], config.allow_mixed_families)
    sets = load_prompt_sets(config)
    metrics = list(config.scorers.keys())
    blocks = plan(sets, list(models), config.block_size)
    mine = blocks[worker::num_workers]
    rows = {b: block_rows(b, sets[b.prompt_set], out, config.images_per_prompt, config.seed) for b in mine}
    made = {(s, m): out.existing_images(s, m) for s, m in {(b.prompt_set, b.model) for b in mine}}
    to_make = {b: batches_to_make(rows[b], config.batch_size, made[b.prompt_set, b.model]) for b in mine}
    to_score = [b for b in mine if not is_scored(out, b, metrics)]

    # Scorers (and their weight files) before any image is made; none where every block is scored.
    scorers = build_scorers(config.scorers, worker_device(config)) if to_score else {}
    job = {
        "generation": {
            "images_per_prompt": config.images_per_prompt,
            "seed": config.seed,
            "seed_rule": SEED_RULE,
            "guidance_scale": config.sampler.guidance_scale,
            "num_inference_steps": config.sampler.num_inference_steps,
            "scheduler": config.sampler.scheduler or "the pipeline's",
            "dtype": str(dtype).removeprefix("torch."),
            "block_size": config.block_size,
        },
        "models": {name: info.describe() for name, info in models.items()},
        "prompt_sets": {name: s.describe() for name, s in sets.items()},
        "scorers": {name: s.describe() | {"arguments": dict(config.scorers[name])} for name, s in scorers.items()},
        "environment": environment(device) | {"batch_size": config.batch_size},  # batches change low bits
        "config": json.loads(json.dumps(config.to_dict(), default=str)),  # paths as strings
    }
    out.check_and_extend_manifest(job)

    total = sum(len(batch) for batches in to_make.values() for batch in batches)
    logging.info("worker %d/%d: %d images to make, %d blocks to score", worker, num_workers, total, len(to_score))
    progress = tqdm(total=total, unit="img", desc="generating", dynamic_ncols=True, disable=total == 0)
    start_time = time.perf_counter()
    for name, info in models.items():
        pipeline = None
        for block in (b for b in mine if b.model == name):
            if to_make[block] and pipeline is None:
                pipeline = load_pipeline(info, device, dtype, config.sampler.scheduler)
            for batch in to_make[block]:
                images = generate(
                    pipeline, info, [r.prompt for r in batch], [r.seed for r in batch],
                    config.sampler.guidance_scale, config.sampler.num_inference_steps,
                )  # fmt: skip
                for row, image in zip(batch, images, strict=True):
                    save_image(image, row.path)
                progress.update(len(batch))
                progress.set_postfix(images_per_s=f"{progress.n / (time.perf_counter() - start_time):.2f}")
            if block in to_score:
                score_block(block, rows[block], scorers, out, config.score_batch_size)
        del pipeline
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()

    done = sum(is_scored(out, b, metrics) for b in blocks)
    if done < len(blocks):
        logging.info("%d of %d blocks done; the worker that finishes the last writes the tables", done, len(blocks))
        return None
    columns = [*ROW_COLUMNS, *metrics]  # of this run's models, sets and scorers only
    tables = [read_table(out.unit_scores(b.prompt_set, b.model, b.index)).select(columns) for b in blocks]
    write_table(pa.concat_tables(tables), out.scores)
    return write_report(out, list(models), list(sets), metrics, comparisons, config)


def write_report(
    out: OutputDir,
    models: Sequence[str],
    sets: Sequence[str],
    metrics: Sequence[str],
    comparisons: Sequence[tuple[str, str]],
    config: ml_collections.ConfigDict,
) -> Results:
    """Tables and pictures from scores.parquet alone."""
    columns = read_scores(out.scores)
    tables = stats.tabulate(
        columns, comparisons, sets, metrics, models,
        config.bootstrap.resamples, config.bootstrap.seed, config.bootstrap.confidence, config.statistic,
    )  # fmt: skip
    files = report.write_tables(tables, out.root)
    grids, pages, charts = {}, {}, {}
    markdown = report.markdown(tables)
    for prompt_set in sets:
        if comparisons:
            charts[prompt_set] = out.chart(prompt_set)
            pictures.win_rate_chart(tables, prompt_set, charts[prompt_set])
        sample = pictures.sample_prompts(columns, prompt_set, config.grid.prompts, config.grid.seed)
        grids[prompt_set] = out.grid(prompt_set)
        grid = pictures.grid(
            columns, out.root, prompt_set, models, metrics, sample, config.grid.image_index, config.grid.cell_size
        )
        save_image(grid, grids[prompt_set])
        pages[prompt_set] = out.page(prompt_set)
        storage.write_text(
            pages[prompt_set],
            pictures.html_page(
                columns, out.root, pages[prompt_set], prompt_set, models, metrics, markdown, charts.get(prompt_set)
            ),
        )
    text = report.win_rate_text(tables) if comparisons else "(no comparisons: one model)"
    return Results(tables, text, out.root, out.scores, files, grids, pages, charts)


def read_scores(path: Location) -> stats.Columns:
    """scores.parquet as numpy columns (strings as object arrays)."""
    table = read_table(path)
    if table is None:
        raise UserError(f"{path} does not exist: run the evaluation to the end first")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def split_model_flags(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Takes ``--config.models.NAME=DIR`` (or ``... NAME DIR``) out of ``argv``, in order: absl
    cannot add keys to a config, and the default comparisons follow the order given."""
    rest, models = [], []
    prefix = "--config.models."
    items = iter(argv)
    for arg in items:
        if arg.startswith(prefix):
            name, sep, value = arg[len(prefix) :].partition("=")
            models.append((name, value if sep else next(items, "")))
        else:
            rest.append(arg)
    return rest, models


MODEL_FLAGS: list[tuple[str, str]] = []


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    with config.unlocked():
        for name, path in MODEL_FLAGS:
            config.models[name] = path
    if flags.FLAGS.verbosity <= 0:
        for name in ("diffusers", "transformers"):
            std_logging.getLogger(name).setLevel(std_logging.ERROR)
    start = time.perf_counter()
    results = run(config)
    if results is None:
        print("this worker's share is done; the last worker to finish writes the tables")
        return
    print(results.text)
    print(f"\ntables: {results.files['markdown']}  scores: {results.scores}  ({time.perf_counter() - start:.0f}s)")
    for prompt_set, path in results.grids.items():
        print(f"{prompt_set}: grid {path}, page {results.pages[prompt_set]}, chart {results.charts.get(prompt_set)}")


if __name__ == "__main__":  # flags are defined here, so that importing this module defines none
    sys.argv, MODEL_FLAGS[:] = split_model_flags(sys.argv)  # before config_flags reads sys.argv
    config_flags.DEFINE_config_file("config", None, "A configs/evaluate/*.py file.", lock_config=True)
    flags.mark_flag_as_required("config")
    errors.run(main)
