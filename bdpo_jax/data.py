"""Pairs from the preprocessing cache, in a deterministic order.

The order is a function of (seed, epoch) alone and a batch is a function of the
step alone, so the data position is just the step in the train state: resuming
at step n gives batch n, whatever the number of processes. Each process reads
its own contiguous slice of every global batch. Flips and caption dropout draw
from (seed, step, pair) so they too do not depend on the process layout.

Batches keep the cache's dtypes (fp16 latents and text states): the step casts
on the device. ``Prefetcher`` builds them ahead on a background thread.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bdpo_jax import cache as cache_format
from bdpo_jax import storage


@dataclasses.dataclass(frozen=True)
class Augment:
    flip: bool = False  # horizontal flip of both latents of a pair, p = 0.5
    caption_dropout: float = 0.0  # probability of the empty prompt's text states


class CacheDataset:
    """Every usable pair of a cache (local or in object storage), addressed by
    one index. The cache is checked against its manifest when opened; latents
    and text states are read by rows (only this process's), checked finite."""

    def __init__(self, cache_dir: str | os.PathLike, drop_vote_ties: bool = True):
        self.path = os.fspath(cache_dir)
        self.manifest = cache_format.read_manifest(self.path)
        if not sum(entry["pairs"] for entry in self.manifest["shards"]):  # before the shards: none is needed
            raise cache_format.CacheError(self.no_usable_pairs())
        self.scorer_names = [s["name"] for s in self.manifest["scorers"]]
        self.sizes = cache_format.manifest_sizes(self.manifest)
        self.fields = cache_format.fields_for(self.sizes, in_batch=True)
        self.shards = cache_format.open_shards(self.path, self.manifest)
        self.empty_prompt = cache_format.read_empty_prompt(self.path)
        locations = []
        for s, shard in enumerate(self.shards):
            usable = np.asarray(shard["keep"]) if drop_vote_ties else np.ones(len(shard["label"]), bool)
            rows = np.flatnonzero(usable)
            locations.append(np.stack([np.full(len(rows), s), rows], axis=1))
        self.locations = np.concatenate(locations) if locations else np.zeros((0, 2), np.int64)
        if not len(self.locations):
            raise cache_format.CacheError(self.no_usable_pairs())

    def no_usable_pairs(self) -> str:
        """Why a cache has no pair to train on, by its manifest's counts, and what to do."""
        counts = self.manifest.get("counts", {})
        rejects = storage.join(self.path, "rejects.jsonl")
        if counts.get("pairs"):  # pairs were made: the tie policy dropped them all
            return (
                f"cache {self.path} has no usable pairs: the vote tied on all {counts['pairs']} and its "
                f"tie_policy {self.manifest.get('tie_policy')!r} drops ties. Train on another train.label_source, "
                f"or preprocess again into a new output_dir with --config.tie_policy=human"
            )
        return (
            f"cache {self.path} has no usable pairs: preprocessing rejected {counts.get('rejected', '?')} of its "
            f"{counts.get('rows', '?')} source rows (each with its reason in {rejects}) and dropped "
            f"{counts.get('human_ties_dropped', 0)} human ties. Correct the source data (or map its columns with "
            f"--config.columns.*), then preprocess it into a new output_dir"
        )

    def keep_only(self, decides: Callable[[Any], np.ndarray]) -> None:
        """Leaves out the pairs a label rule does not count: ``decides(shard)`` is a bool per row."""
        kept = [np.asarray(decides(self.shards[s]), bool)[self.locations[self.locations[:, 0] == s, 1]]
                for s in range(len(self.shards))]  # fmt: skip
        self.locations = self.locations[np.concatenate(kept)] if kept else self.locations
        if not len(self.locations):
            raise cache_format.CacheError(f"cache {self.path}: the label rule decides none of its pairs")

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["base_model"]["latent_shape"])

    def _scores(self) -> np.ndarray:
        """Every usable pair's scores, (pairs, scorers, 2)."""
        return np.concatenate([np.asarray(shard["scores"]) for shard in self.shards])[self._flat_rows()]

    def _flat_rows(self) -> np.ndarray:
        starts = np.cumsum([0] + [len(shard["label"]) for shard in self.shards])[:-1]
        return starts[self.locations[:, 0]] + self.locations[:, 1]

    def score_scale(self, statistic: str = "std") -> tuple[float, ...]:
        """Each scorer's scale over the usable pairs: ``std``, the standard deviation of its scores over
        their images ('normalized' labels); ``difference``, the median of its absolute score difference
        within a pair, how far apart it typically puts two images ('veto' labels)."""
        scores = self._scores()
        if statistic == "std":
            values = scores.transpose(0, 2, 1).reshape(-1, len(self.scorer_names)).std(axis=0)
        elif statistic == "difference":
            values = np.median(np.abs(scores[..., 0] - scores[..., 1]), axis=0)
        else:
            raise ValueError(f"score scale {statistic!r}: std or difference")
        return tuple(float(max(s, 1e-12)) for s in values)

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The pairs at dataset indices, in the cache's dtypes: each shard is
        indexed once with an array of its rows (in file order); in object
        storage every shard's rows are fetched in one concurrent batch."""
        locations = self.locations[indices]
        n = len(indices)
        batch = {f.name: np.empty((n, *cache_format.row_shape(f, self.sizes)), f.dtype) for f in self.fields}
        targets, requests = [], []
        for s in np.unique(locations[:, 0]):
            at = np.flatnonzero(locations[:, 0] == s)
            order = np.argsort(locations[at, 1], kind="stable")
            at, rows = at[order], locations[at[order], 1]
            shard = self.shards[s]
            captions = np.asarray(shard["caption_id"][rows])
            for f in self.fields:
                targets.append((f.name, at))
                requests.append((shard[f.name], rows if f.per == cache_format.PAIR else captions))
        for (name, at), values in zip(targets, cache_format.take(requests), strict=True):
            batch[name][at] = values
        return batch


class PairLoader:
    """Global batch ``step`` of a per-epoch shuffle; this process's slice of it."""

    def __init__(
        self,
        dataset: CacheDataset,
        global_batch: int,
        seed: int,
        augment: Augment = Augment(),
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} does not split over {process_count} processes")
        if global_batch > len(dataset):
            raise ValueError(f"global batch {global_batch} is larger than the cache's {len(dataset)} usable pairs")
        self.dataset, self.global_batch, self.seed, self.augment = dataset, global_batch, seed, augment
        self.local = slice(
            process_index * global_batch // process_count, (process_index + 1) * global_batch // process_count
        )
        self.batches_per_epoch = len(dataset) // global_batch  # the ragged tail of an epoch is skipped

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def global_indices(self, step: int) -> np.ndarray:
        epoch, offset = divmod(step, self.batches_per_epoch)
        return self.epoch_order(epoch)[offset * self.global_batch : (offset + 1) * self.global_batch]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        indices = self.global_indices(step)[self.local]
        batch = self.dataset.gather(indices)
        positions = np.arange(self.global_batch)[self.local]
        rng = np.random.default_rng([self.seed, 1 + step])
        flip_draw, drop_draw = rng.random((2, self.global_batch))[:, positions]
        if self.augment.flip:
            flip = flip_draw < 0.5
            for key in ("latents_0", "latents_1"):
                batch[key][flip] = batch[key][flip][:, :, ::-1]
        if self.augment.caption_dropout > 0:
            drop = drop_draw < self.augment.caption_dropout
            for key, empty in self.dataset.empty_prompt.items():
                batch[key][drop] = empty
        return batch


class Prefetcher:
    """``make(step)`` for steps ``start, start + 1, ...``, built ``depth`` steps
    ahead on a background thread, so that the accelerator does not wait on the
    host. An error in the thread is raised where the batch is taken."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int, depth: int = 2):
        self.make, self.stop_step = make, stop
        self.queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(start,), daemon=True, name="prefetch")
        self.thread.start()

    def _fill(self, step: int) -> None:
        while step < self.stop_step and not self.closed.is_set():
            try:
                item = (step, self.make(step), None)
            except BaseException as e:  # handed to the consumer
                item = (step, None, e)
            while not self.closed.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self

    def __next__(self) -> tuple[int, Any]:
        if self.closed.is_set():
            raise StopIteration
        while True:
            try:
                step, batch, error = self.queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise StopIteration from None
        if error is not None:
            raise error
        return step, batch

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
