"""Scores preference pairs with every configured scorer, votes, and caches VAE
latents and text states for the JAX trainer.

    python -m scorers_torch.preprocess --config configs/preprocess/paper.py:sd15 \
        --config.source=/data/pickapic_v2 --config.base_model=/models/sd15 --config.output_dir=/cache/sd15

Work is split into shards of ``shard_size`` source rows; shard i belongs to
worker ``i % num_workers`` (torchrun's RANK/WORLD_SIZE, or the config's
``worker_index``/``num_workers`` on several hosts). A shard is written whole or
not at all, so a killed job, run again, skips finished shards and loses no pair.
The last worker to finish writes ``manifest.json``. The output may be local or
in object storage (``gs://``, ``s3://``, through ``bdpo_jax.storage``).

Bad input is refused where it enters: settings are checked before anything is
written (a typo does not lock the output directory); ``job.json`` fingerprints
the source files and the base model's weights, so that a resumed job refuses a
changed source or model; rows with bad labels, captions or images, or whose
scores, latents or text states are not finite, are rejected and listed in
``rejects.jsonl``. Two identical jobs into one directory both finish (a shard
the other wrote first is kept), and leftovers of dead writers are removed.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from PIL import Image
from tqdm import tqdm

from bdpo_jax import cache as cache_format
from bdpo_jax import errors, records, storage
from bdpo_jax.errors import UserError
from scorers_torch.encoders import BaseModelEncoders
from scorers_torch.pickapic import ImageTooLargeError, Pair, PreferenceSource, decode_image
from scorers_torch.scorers import Scorer, build_scorer
from scorers_torch.threads import thread_map
from scorers_torch.votes import TIE_POLICIES, human_label, majority_vote
from scorers_torch.workers import worker_device, worker_from_env


class PreprocessConfigError(UserError):
    """A preprocessing setting that cannot work."""


def check_settings(config: ml_collections.ConfigDict) -> None:
    """Every setting checked before anything is loaded or written."""
    for key, hint in (
        ("source", "the preference pairs (parquet file or directory, save_to_disk directory, hf://org/name)"),
        ("base_model", "a diffusers pipeline directory"),
        ("output_dir", "where the cache goes (a local path, gs:// or s3://)"),
    ):
        if not config.get(key):
            raise PreprocessConfigError(f"set --config.{key}: {hint}")
    for key, least in (
        ("shard_size", 1),
        ("batch_size", 1),
        ("num_workers", 1),
        ("limit", 0),
        ("max_image_pixels", 1),
        ("max_aspect_ratio", 1),
    ):
        value = config.get(key)
        if value is not None and value < least:
            raise PreprocessConfigError(f"{key} {value} must be at least {least}: set --config.{key}")
    if config.resolution is not None and config.resolution <= 0:
        raise PreprocessConfigError(f"resolution {config.resolution} must be positive (or unset: the model's own)")
    if config.tie_policy not in TIE_POLICIES:
        raise PreprocessConfigError(f"tie_policy {config.tie_policy!r} is not one of {TIE_POLICIES}")
    if not config.scorers:
        raise PreprocessConfigError("config.scorers is empty: name at least one scorer")


def job_description(
    config: ml_collections.ConfigDict, source: PreferenceSource, encoders: BaseModelEncoders, scorers: list[Scorer]
) -> dict[str, Any]:
    num_rows = len(source) if config.limit is None else min(config.limit, len(source))
    return {
        "format_version": cache_format.FORMAT_VERSION,
        "source": {**source.describe(), "rows": num_rows},
        "base_model": encoders.describe(),
        "scorers": [s.describe() for s in scorers],
        "vote_rule": "sign of the sum of per-scorer signs; ties as tie_policy",
        "tie_policy": config.tie_policy,
        "drop_human_ties": config.drop_human_ties,
        "shard_size": config.shard_size,
        "num_shards": -(-num_rows // config.shard_size),
    }


def check_or_write_job(output: str, job: dict[str, Any]) -> None:
    """A resumed job must make the same cache it started (same settings, same
    source files, same weights); anything else is a new output_dir."""
    path = storage.join(output, "job.json")
    try:
        previous = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        previous = None
    except OSError as e:  # a file where a folder should be, no permission, ...
        raise PreprocessConfigError(f"cannot write {path} ({e}): give a writable output_dir") from None
    except ValueError as e:
        raise cache_format.CacheError(
            f"{path} is damaged ({e}): delete it if the folder holds nothing else of value, or use a new output_dir"
        ) from None
    if previous is not None:
        changed = sorted(records.changes(previous, job))
        if changed:
            raise cache_format.CacheError(
                f"{output} holds a cache made with other settings (differing: {changed}), where the source "
                "files and the base model's weights count as settings; "
                "use a new output_dir, or delete the old cache to remake it"
            )
        return
    try:
        cache_format.write_json_atomic(path, job)
    except OSError as e:
        raise PreprocessConfigError(f"cannot write {path} ({e}): give a writable output_dir") from None


def process_shard(
    pairs: list[Pair],
    config: ml_collections.ConfigDict,
    encoders: BaseModelEncoders,
    scorers: list[Scorer],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode, filter, score, vote, encode one shard's pairs; every row that
    cannot be used (bad label, caption or image, non-finite output) rejected and listed."""
    rejects, candidates, images = [], [], []
    human_ties = 0
    for pair in pairs:
        if pair.problem:
            rejects.append({"row": pair.row, "reason": pair.problem})
        elif config.drop_human_ties and pair.label_0 == 0.5:
            human_ties += 1
        elif not pair.caption.strip():
            rejects.append({"row": pair.row, "reason": "empty caption"})
        else:
            candidates.append(pair)
    decode = functools.partial(_decode_pair, max_pixels=config.max_image_pixels, max_aspect=config.max_aspect_ratio)
    kept = []
    for pair, decoded in zip(candidates, thread_map(decode, candidates), strict=True):
        if isinstance(decoded, ImageTooLargeError):
            rejects.append({"row": pair.row, "reason": f"image too large: {decoded}"})
        elif isinstance(decoded, Exception):  # truncated, not an image, ...
            rejects.append({"row": pair.row, "reason": f"corrupt image: {type(decoded).__name__}: {decoded}"})
        else:
            kept.append(pair)
            images.append(decoded)

    n = len(kept)
    scores = np.zeros((n, len(scorers), 2), np.float32)
    latents: list[list[np.ndarray]] = [[], []]
    prompts = [p.caption for p in kept]
    for start in range(0, n, config.batch_size):
        batch = slice(start, start + config.batch_size)
        for side in (0, 1):
            side_images = [im[side] for im in images[batch]]
            for k, scorer in enumerate(scorers):
                scores[batch, k, side] = scorer.score(side_images, prompts[batch])
            latents[side].append(encoders.encode_images(side_images))
    latent_shape = tuple(encoders.describe()["latent_shape"])
    latent_arrays = [np.concatenate(side) if n else np.zeros((0, *latent_shape), np.float16) for side in latents]
    all_captions = sorted(set(prompts))
    text_states, pooled = encoders.encode_text(all_captions) if all_captions else no_text(encoders.describe())

    problems = non_finite_rows(kept, all_captions, scores, latent_arrays, text_states, pooled, scorers)
    rejects += [{"row": kept[i].row, "reason": reason} for i, reason in problems.items()]
    rejects.sort(key=lambda r: r["row"])
    good = np.array([i not in problems for i in range(n)], bool)
    kept = [p for p, ok in zip(kept, good, strict=True) if ok]
    scores, latent_arrays = scores[good], [side[good] for side in latent_arrays]
    captions = sorted({p.caption for p in kept})
    caption_id = {c: i for i, c in enumerate(captions)}
    caption_rows = [all_captions.index(c) for c in captions]
    n = len(kept)

    votes = majority_vote(scores, config.tie_policy, np.array([p.label_0 for p in kept], np.float32))
    arrays = {
        "latents_0": latent_arrays[0],
        "latents_1": latent_arrays[1],
        "scores": scores,
        "votes": votes.votes,
        "label": votes.label,
        "keep": votes.keep,
        "label_0": np.array([p.label_0 for p in kept], np.float32),
        "source_row": np.array([p.row for p in kept], np.int64),
        "caption_id": np.array([caption_id[p.caption] for p in kept], np.int32),
        "text_states": text_states[caption_rows],
    }
    if pooled is not None:
        arrays["pooled"] = pooled[caption_rows]
    agreement = (np.sign(votes.label) == human_label(arrays["label_0"])).sum() if n else 0
    stats = {
        "rows": len(pairs),
        "human_ties_dropped": human_ties,
        "rejected": len(rejects),
        "vote_agrees_with_human": int(agreement),
        **votes.counts(),
    }
    return arrays, {"captions.json": captions, "stats.json": stats, "rejects.jsonl": rejects}


def non_finite_rows(
    pairs: list[Pair],
    captions: list[str],
    scores: np.ndarray,
    latents: list[np.ndarray],
    text_states: np.ndarray,
    pooled: np.ndarray | None,
    scorers: list[Scorer],
) -> dict[int, str]:
    """Pairs (by index) whose scores, latents or caption's text states are not finite, and why."""

    def bad(array: np.ndarray) -> np.ndarray:
        return ~np.isfinite(array.astype(np.float32)).all(axis=tuple(range(1, array.ndim)))

    problems: dict[int, str] = {}
    for i, k, side in zip(*np.nonzero(~np.isfinite(scores)), strict=True):
        name = getattr(scorers[k], "name", "") or type(scorers[k]).__name__
        problems.setdefault(int(i), f"score of {name} for image {side} is not finite ({scores[i, k, side]})")
    for side, array in enumerate(latents):
        for i in np.flatnonzero(bad(array)):
            problems.setdefault(int(i), f"VAE latent of image {side} is not finite")
    bad_text = bad(text_states) | (bad(pooled) if pooled is not None else False)
    bad_captions = {captions[j] for j in np.flatnonzero(bad_text)}
    for i, pair in enumerate(pairs):
        if pair.caption in bad_captions:
            problems.setdefault(i, "text states of its caption are not finite")
    return problems


def no_text(base_model: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The caption arrays of a shard whose rows were all rejected: no rows, the cache's row shapes."""
    text_states = np.zeros((0, base_model["text_length"], base_model["text_dim"]), np.float16)
    pooled = np.zeros((0, base_model["pooled_dim"]), np.float16) if base_model["pooled_dim"] else None
    return text_states, pooled


def _decode_pair(pair: Pair, max_pixels: int, max_aspect: float) -> tuple[Image.Image, Image.Image] | Exception:
    try:
        return tuple(decode_image(data, max_pixels, max_aspect) for data in (pair.jpg_0, pair.jpg_1))
    except Exception as e:
        return e


def write_empty_prompt(output: str, encoders: BaseModelEncoders) -> None:
    directory = storage.join(output, "empty_prompt")
    if storage.is_complete(directory) or (storage.is_local(directory) and storage.exists(directory)):
        return
    text_states, pooled = encoders.encode_text([""])
    arrays = {"text_states": text_states} | ({"pooled": pooled} if pooled is not None else {})
    cache_format.write_arrays(directory, arrays, {"captions.json": [""]})


def finalize(output: str, job: dict[str, Any]) -> dict[str, Any] | None:
    """Writes manifest.json once every shard is there; returns it (None if not yet)."""
    done = cache_format.completed_shards(output)
    if len(done) < job["num_shards"]:
        return None
    directories = [cache_format.shard_dir(output, index) for index in range(job["num_shards"])]
    files = storage.read_many([storage.join(d, name) for d in directories for name in ("stats.json", "rejects.jsonl")])
    totals: dict[str, int] = {}
    shards, rejects = [], []
    for directory, stats_bytes, rejects_bytes in zip(directories, files[::2], files[1::2], strict=True):
        for chunk in (stats_bytes, rejects_bytes):
            if isinstance(chunk, BaseException):
                raise chunk
        stats = json.loads(stats_bytes)
        shards.append({"name": os.path.basename(directory), "pairs": stats["pairs"]})
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
        rejects.extend(rejects_bytes.decode().splitlines())
    storage.write_text(storage.join(output, "rejects.jsonl"), "".join(line + "\n" for line in rejects))
    manifest = {**job, "shards": shards, "counts": totals}
    cache_format.write_json_atomic(storage.join(output, "manifest.json"), manifest)
    return manifest


def run(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The whole job for this worker; returns the manifest if this worker finished the cache (or found it
    finished: then it writes nothing)."""
    check_settings(config)
    output = config.output_dir
    output = os.path.expanduser(output) if storage.is_local(output) else output
    worker, num_workers = worker_from_env(config)
    device = worker_device(config)

    source = PreferenceSource(config.source, config.split, config.columns)
    encoders = BaseModelEncoders(config.base_model, config.resolution, device)
    scorers = [build_scorer(name, device=device, **dict(kwargs)) for name, kwargs in config.scorers.items()]
    job = job_description(config, source, encoders, scorers)
    check_or_write_job(output, job)
    for folder in (output, storage.join(output, "shards")):
        for name in storage.remove_stale_temporaries(folder):
            logging.info("removed %s, left by a writer that died", storage.join(folder, name))
    manifest_path = storage.join(output, "manifest.json")
    if storage.exists(manifest_path):  # finished: nothing to write (the output may be read-only by now)
        logging.info("the cache in %s is complete: nothing to do", output)
        return storage.read_json(manifest_path)
    if worker == 0:
        write_empty_prompt(output, encoders)

    finished = cache_format.completed_shards(output)
    todo = [i for i in range(job["num_shards"]) if i % num_workers == worker and i not in finished]
    num_rows = job["source"]["rows"]
    logging.info("worker %d/%d: %d shards to do of %d", worker, num_workers, len(todo), job["num_shards"])
    total = sum(min(num_rows, (i + 1) * config.shard_size) - i * config.shard_size for i in todo)
    progress = tqdm(total=total, desc="pairs", disable=not todo)
    start_time = time.perf_counter()
    for index in todo:
        start, stop = index * config.shard_size, min(num_rows, (index + 1) * config.shard_size)
        arrays, extra = process_shard(source.pairs(start, stop), config, encoders, scorers)
        if not cache_format.write_arrays(cache_format.shard_dir(output, index), arrays, extra):
            logging.info("shard %d was written by another job meanwhile: kept", index)
        progress.update(stop - start)
        progress.set_postfix(pairs_per_s=f"{progress.n / (time.perf_counter() - start_time):.1f}")
    progress.close()
    manifest = finalize(output, job)
    if manifest is not None:
        logging.info("cache complete in %s: %s", output, manifest["counts"])
    return manifest


def main(argv: list[str]) -> None:
    del argv
    manifest = run(flags.FLAGS.config)
    if manifest is not None:
        print(json.dumps(manifest["counts"], indent=2))


if __name__ == "__main__":  # flags are defined here, so that importing this module defines none
    config_flags.DEFINE_config_file("config", None, "A configs/preprocess/*.py file.", lock_config=True)
    flags.mark_flag_as_required("config")
    errors.run(main)
