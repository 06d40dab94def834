"""The data loader alone: pairs/s that ``PairLoader`` builds from a cache on
disk (memory-mapped shards, flips, caption dropout), and through the
``Prefetcher`` into device arrays, at SD1.5 and SDXL shapes.

    python -m bench.loader                       # both shapes, 2048 pairs each
    python -m bench.loader --shapes sd15 --pairs 512 --out loader.json

The cache is synthetic (random arrays in the cache schema, written with the
cache module's writer); the first pass over it runs before timing, so the page
cache holds it, as it does on a trainer host after the first epoch. The target
it is compared with: 10x the pairs/s that the train step needs (the issue's
81 pairs/s for SD1.5).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bdpo_jax import cache as cache_format
from bdpo_jax import sharding
from bdpo_jax.data import Augment, CacheDataset, PairLoader, Prefetcher
from bench import report

SHAPES = {
    # latent h, w, c; text length and width; pooled width; pairs per step; target pairs/s of the step
    "sd15": {"h": 64, "w": 64, "c": 4, "text_length": 77, "text_dim": 768, "pooled_dim": None, "batch": 128},
    "sdxl": {"h": 128, "w": 128, "c": 4, "text_length": 77, "text_dim": 2048, "pooled_dim": 1280, "batch": 64},
}
STEP_TARGET_PAIRS_PER_S = {"sd15": 81.0}


def write_synthetic_cache(root: Path, shape: dict, pairs: int, shard_size: int, scorers: int = 4) -> Path:
    """A complete cache on disk, every array through the cache module's writer."""
    sizes = {k: v for k, v in shape.items() if k != "batch"} | {"scorers": scorers}
    shards = []
    for index, start in enumerate(range(0, pairs, shard_size)):
        n = min(shard_size, pairs - start)
        arrays = cache_format.synthetic_arrays(sizes, n, captions=n, seed=index)
        cache_format.write_arrays(
            cache_format.shard_dir(root, index), arrays, {"captions.json": [f"caption {i}" for i in range(n)]}
        )
        shards.append({"name": f"{index:05d}", "pairs": n})
    empty = cache_format.synthetic_arrays(sizes, 1, captions=1, seed=99)
    cache_format.write_arrays(
        root / "empty_prompt", {k: v for k, v in empty.items() if cache_format.FIELD[k].per == "caption"}, {}
    )
    base = {
        "path": "synthetic",
        "resolution": 8 * shape["h"],
        "latent_shape": [shape["h"], shape["w"], shape["c"]],
        "text_length": shape["text_length"],
        "text_dim": shape["text_dim"],
        "pooled_dim": shape["pooled_dim"],
    }
    manifest = {
        "format_version": cache_format.FORMAT_VERSION,
        "base_model": base,
        "scorers": [{"name": f"scorer{k}"} for k in range(scorers)],
        "shards": shards,
        "num_shards": len(shards),
        "counts": {"pairs": pairs},
    }
    cache_format.write_json_atomic(root / "manifest.json", manifest)
    return root


def gather_row_by_row(dataset: CacheDataset, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The loader's gather before it indexed shards with arrays (a Python loop per
    row, fp32 on the host): the baseline the ratio is quoted against."""
    rows: dict[str, list] = {f.name: [] for f in dataset.fields}
    for s, i in dataset.locations[indices]:
        shard = dataset.shards[s]
        caption = shard["caption_id"][i]
        for f in dataset.fields:
            rows[f.name].append(shard[f.name][i if f.per == cache_format.PAIR else caption])
    return {k: np.stack(v).astype(np.float32) for k, v in rows.items()}


def pairs_per_s(make, steps: int, batch: int) -> float:
    start = time.perf_counter()
    for step in range(steps):
        jax.block_until_ready(make(step))
    return steps * batch / (time.perf_counter() - start)


def measure(name: str, pairs: int, steps: int, prefetch: int) -> dict:
    shape = SHAPES[name]
    batch = shape["batch"]
    with tempfile.TemporaryDirectory() as tmp:
        dataset = CacheDataset(write_synthetic_cache(Path(tmp), shape, pairs, shard_size=256))
        loader = PairLoader(dataset, batch, seed=0, augment=Augment(flip=True, caption_dropout=0.1))
        for step in range(loader.batches_per_epoch):  # warm the page cache
            loader.batch(step)
        host = pairs_per_s(loader.batch, steps, batch)
        row_by_row = pairs_per_s(lambda step: gather_row_by_row(dataset, loader.global_indices(step)), steps, batch)
        mesh = sharding.make_mesh(1, -1)

        def to_device(step: int):
            return sharding.global_batch(loader.batch(step), mesh)

        to_device(0)
        device = pairs_per_s(to_device, steps, batch)
        batches = Prefetcher(to_device, 0, steps, prefetch)
        start = time.perf_counter()
        for _, item in batches:
            jax.block_until_ready(item)
        prefetched = steps * batch / (time.perf_counter() - start)
        batches.close()
    bytes_per_pair = sum(
        int(np.prod(cache_format.row_shape(f, dataset.sizes))) * f.dtype.itemsize for f in dataset.fields
    )
    target = STEP_TARGET_PAIRS_PER_S.get(name)
    return {
        "shape": name,
        "pairs_per_step": batch,
        "bytes_per_pair": bytes_per_pair,
        "host_batches_pairs_per_s": host,
        "baseline_row_by_row_gather_pairs_per_s": row_by_row,
        "ratio_host_over_baseline": host / row_by_row,
        "device_batches_pairs_per_s": device,
        "prefetched_device_batches_pairs_per_s": prefetched,
        "target_pairs_per_s": 10 * target if target else None,
        "meets_target": bool(min(host, device) >= 10 * target) if target else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="sd15,sdxl")
    parser.add_argument("--pairs", type=int, default=2048, help="pairs in the synthetic cache")
    parser.add_argument("--steps", type=int, default=16, help="batches timed")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = [measure(name, args.pairs, args.steps, args.prefetch) for name in args.shapes.split(",")]
    result = {"device": jax.devices()[0].device_kind, "cpu_cores": _cores(), "results": results}
    report(result, args.out)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
