"""The preprocessing cache: what ``scorers_torch.preprocess`` writes and
``bdpo_jax.train`` reads. numpy and json only (no JAX, no torch), so that both
sides import it without the other's framework; ``bdpo_jax/__init__.py`` imports
nothing for the same reason.

    CACHE/
      job.json                what the cache is made from (checked on resume)
      manifest.json           written last: the cache is complete when it exists
      empty_prompt/           the caption arrays of "" (caption dropout), one row
      shards/00000/           one directory per block of source rows, written whole or not at all
        <field>.npy           one file per field of ``FIELDS`` below
        captions.json, stats.json, rejects.jsonl

``FIELDS`` is the one schema: the writer conforms to it, the reader, the
empty-prompt reader, the trainer's batches and the benches' synthetic batches
are made from it. Every array is opened through ``open_array``, the one place
that touches a shard's files.

A cache may be local or in object storage (``gs://``, ``s3://``): every file
goes through ``bdpo_jax.storage``. The reader (``open_shards``) checks the
manifest against the arrays before a batch is made: shard count, every file's
size against its header, dtypes, shapes, row counts, and the small arrays'
values (finite scores, labels in {0, 0.5, 1}, caption ids in range), the
model family against the arrays (SDXL's alone hold pooled vectors), and the
manifest against ``job.json`` (the scorers' order in which the arrays were
written); latents and text states are checked as they are read (``take``). A
problem is a ``CacheError`` that names the file and the fix.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bdpo_jax import storage
from bdpo_jax.errors import UserError

FORMAT_VERSION = 1

PAIR, CAPTION = "pair", "caption"  # one row per preference pair, or per unique caption of the shard


@dataclasses.dataclass(frozen=True)
class Field:
    """One array of a shard. ``shape`` names the trailing dimensions (after the
    row) by the manifest's sizes (see ``dims``); ``in_batch``: the trainer reads it."""

    name: str
    dtype: np.dtype
    per: str
    shape: tuple[str | int, ...]
    in_batch: bool
    doc: str
    sdxl_only: bool = False


FIELDS: tuple[Field, ...] = (
    Field("latents_0", np.dtype(np.float16), PAIR, ("h", "w", "c"), True, "VAE latent of image 0, NHWC, scaled"),
    Field("latents_1", np.dtype(np.float16), PAIR, ("h", "w", "c"), True, "VAE latent of image 1"),
    Field("scores", np.dtype(np.float32), PAIR, ("scorers", 2), True, "every scorer's score of both images"),
    Field("votes", np.dtype(np.int8), PAIR, ("scorers",), True, "+1 where scorer k prefers image 0, else -1"),
    Field("label", np.dtype(np.int8), PAIR, (), True, "the vote label after the tie policy (0: tie kept)"),
    Field("keep", np.dtype(np.bool_), PAIR, (), False, "False where the tie policy drops the pair"),
    Field("label_0", np.dtype(np.float32), PAIR, (), True, "the human label of image 0 (1 or 0)"),
    Field("source_row", np.dtype(np.int64), PAIR, (), False, "row in the source table"),
    Field("caption_id", np.dtype(np.int32), PAIR, (), False, "row of the caption fields for the pair's caption"),
    Field("text_states", np.dtype(np.float16), CAPTION, ("text_length", "text_dim"), True, "text-encoder states"),
    Field("pooled", np.dtype(np.float16), CAPTION, ("pooled_dim",), True, "pooled text vector", sdxl_only=True),
)
FIELD = {f.name: f for f in FIELDS}


def dims(base_model: Mapping[str, Any], num_scorers: int) -> dict[str, int | None]:
    """The sizes that ``Field.shape`` names, from a manifest's ``base_model`` entry."""
    h, w, c = base_model["latent_shape"]
    return {
        "h": h,
        "w": w,
        "c": c,
        "scorers": num_scorers,
        "text_length": base_model["text_length"],
        "text_dim": base_model["text_dim"],
        "pooled_dim": base_model.get("pooled_dim"),
    }


def fields_for(sizes: Mapping[str, int | None], in_batch: bool | None = None) -> tuple[Field, ...]:
    """The fields a cache of these sizes holds (SDXL's only where there is a pooled vector)."""
    return tuple(
        f
        for f in FIELDS
        if (not f.sdxl_only or sizes.get("pooled_dim")) and (in_batch is None or f.in_batch == in_batch)
    )


def row_shape(field: Field, sizes: Mapping[str, int | None]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else int(sizes[d]) for d in field.shape)


def conform(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The writer's arrays in the schema's dtypes; a name outside the schema is a bug."""
    unknown = sorted(set(arrays) - set(FIELD))
    if unknown:
        raise ValueError(f"arrays {unknown} are not fields of the cache schema ({sorted(FIELD)})")
    return {name: np.asarray(a).astype(FIELD[name].dtype, copy=False) for name, a in arrays.items()}


def synthetic_arrays(
    sizes: Mapping[str, int | None], pairs: int, captions: int | None = None, seed: int = 0, batch: bool = False
) -> dict[str, np.ndarray]:
    """Random arrays in the schema: a shard (``captions`` rows of caption
    fields), or with ``batch`` a train batch (every field one row per pair)."""
    rng = np.random.default_rng(seed)
    captions = pairs if captions is None else captions
    out = {}
    for f in fields_for(sizes, in_batch=True if batch else None):
        rows = pairs if batch or f.per == PAIR else captions
        shape = (rows, *row_shape(f, sizes))
        if f.name in ("votes", "label"):
            value = rng.choice(np.array([-1, 1], f.dtype), shape)
        elif f.name == "keep":
            value = np.ones(shape, bool)
        elif f.name == "label_0":
            value = rng.integers(0, 2, shape)
        elif f.name == "caption_id":
            value = rng.integers(0, captions, shape)
        elif f.name == "source_row":
            value = np.arange(pairs)
        else:
            value = rng.standard_normal(shape, np.float32)
        out[f.name] = value.astype(f.dtype)
    return out


class CacheError(UserError):
    """A cache is incomplete, damaged, or made for something other than what is asked."""


REMAKE = "delete that folder and run the preprocessing job again with the same config: it remakes it"
SHARD_DAMAGED = "the cache is damaged or was edited; " + REMAKE.replace("that folder", "its shard's folder")
SMALL_FIELDS = ("scores", "votes", "label", "keep", "label_0", "source_row", "caption_id")  # loaded whole


def shard_dir(cache: str | os.PathLike, index: int) -> str:
    return storage.join(cache, "shards", f"{index:05d}")


def completed_shards(cache: str | os.PathLike) -> set[int]:
    """The shards written whole: with their marker, or (local format-1 caches) renamed into place."""
    root = storage.join(cache, "shards")
    names = set(storage.complete_children(root))
    if storage.is_local(root):
        local = storage.filesystem(root)[1]
        names |= {n for n in storage.list_names(root) if os.path.isdir(os.path.join(local, n))}
    return {int(n) for n in names if n.isdigit()}


def write_arrays(directory: str | os.PathLike, arrays: Mapping[str, np.ndarray], extra_json: Mapping[str, Any]) -> bool:
    """Writes a shard (or the empty prompt) whole or not at all. A copy that
    another writer finished first (two identical jobs) is kept: returns False."""
    if storage.is_complete(directory):
        return False
    try:
        with storage.atomic_directory(directory) as d:
            for name, array in conform(arrays).items():
                d.save_array(name, array)
            for name, value in extra_json.items():
                if name.endswith(".jsonl"):
                    d.write_text(name, "".join(json.dumps(v) + "\n" for v in value))
                else:
                    d.write_json(name, value)
    except FileExistsError:  # finished by another writer between the check and the write
        return False
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, os.fspath(directory)) from e  # numpy's writes name no file
    return True


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    storage.write_json(path, value)


MANIFEST_KEYS = ("base_model", "scorers", "shards", "num_shards")
BASE_MODEL_KEYS = ("latent_shape", "text_length", "text_dim")


def read_manifest(cache: str | os.PathLike) -> dict[str, Any]:
    """The manifest, checked for what the reader needs; a clear error for an
    unfinished cache, a damaged manifest or another format version."""
    path = storage.join(cache, "manifest.json")
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        job = storage.join(cache, "job.json")
        if storage.exists(job):
            total = _json(job, storage.read_bytes(job)).get("num_shards", "?")
            raise CacheError(
                f"cache {cache} is incomplete ({len(completed_shards(cache))} of {total} shards): "
                "run the preprocessing job again with the same config to finish it"
            ) from None
        raise CacheError(f"{cache} is not a preprocessing cache (no manifest.json)") from None
    manifest = _json(path, data)
    if not isinstance(manifest, dict):
        raise CacheError(f"{path} is not a JSON object: {_REWRITE_MANIFEST}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"cache {cache} has format version {manifest.get('format_version')}; this code reads {FORMAT_VERSION}"
        )
    for keys, where in ((MANIFEST_KEYS, manifest), (BASE_MODEL_KEYS, manifest.get("base_model", {}))):
        for key in keys:
            if key not in where:
                raise CacheError(f"{path} lacks {key!r}: {_REWRITE_MANIFEST}")
    return manifest


_REWRITE_MANIFEST = (
    "the manifest is damaged or was edited; delete it and run the preprocessing job again with the same "
    "config (it rewrites the manifest from the finished shards)"
)


def _json(path: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"{path} is not valid JSON ({e}): {_REWRITE_MANIFEST}") from None


def manifest_sizes(manifest: Mapping[str, Any]) -> dict[str, int | None]:
    return dims(manifest["base_model"], len(manifest["scorers"]))


def open_array(path: str, header: storage.NpyHeader | None = None) -> Any:
    """One field of a shard (or of the empty prompt) by rows: every read of a cache's arrays passes here."""
    return storage.open_array(path, header=header)


def load_shard(cache: str | os.PathLike, index: int) -> dict[str, Any]:
    """A shard's arrays by field name (the large ones by rows), plus its captions; unchecked."""
    directory = shard_dir(cache, index)
    names = storage.list_names(directory)
    out: dict[str, Any] = {}
    for f in FIELDS:
        if f"{f.name}.npy" not in names:
            if f.sdxl_only:
                continue
            raise CacheError(f"{directory} lacks {f.name}.npy: the shard is damaged; {REMAKE}")
        path = storage.join(directory, f"{f.name}.npy")
        out[f.name] = storage.load_array(path) if f.name in SMALL_FIELDS else open_array(path)
    out["captions"] = storage.read_json(storage.join(directory, "captions.json"))
    return out


def open_shards(cache: str | os.PathLike, manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every shard of a cache, checked against its manifest: one listing, one
    batch of header reads and one of small files (few requests in a bucket)."""
    sizes = manifest_sizes(manifest)
    fields = fields_for(sizes)
    listed = storage.file_sizes(cache)
    count = len(manifest["shards"])
    if count != manifest["num_shards"]:
        raise CacheError(
            f"{storage.join(cache, 'manifest.json')} lists {count} shards; the job made {manifest['num_shards']}: "
            f"{_REWRITE_MANIFEST}"
        )
    names = [f"shards/{entry['name']}" for entry in manifest["shards"]]
    _check_family(cache, manifest, [name for name in names if f"{name}/pooled.npy" in listed])
    for name in names:
        for f in fields:
            if f"{name}/{f.name}.npy" not in listed:
                raise CacheError(f"{storage.join(cache, name)} lacks {f.name}.npy: the shard is damaged; {REMAKE}")
        if f"{name}/captions.json" not in listed:
            raise CacheError(f"{storage.join(cache, name)} lacks captions.json: the shard is damaged; {REMAKE}")
    paths = [storage.join(cache, f"{name}/{f.name}.npy") for name in names for f in fields]
    headers = iter(_headers(paths))
    small = iter(
        storage.read_many(
            [storage.join(cache, f"{name}/{f.name}.npy") for name in names for f in fields if f.name in SMALL_FIELDS]
        )
    )
    captions = iter(storage.read_many([storage.join(cache, f"{name}/captions.json") for name in names]))
    shards = []
    for name, entry in zip(names, manifest["shards"], strict=True):
        directory = storage.join(cache, name)
        shard: dict[str, Any] = {"captions": _json(storage.join(directory, "captions.json"), _ok(next(captions)))}
        rows = {PAIR: int(entry["pairs"]), CAPTION: len(shard["captions"])}
        for f in fields:
            path, header = storage.join(directory, f"{f.name}.npy"), next(headers)
            _check_header(path, header, listed[f"{name}/{f.name}.npy"], f, sizes, rows[f.per])
            if f.name in SMALL_FIELDS:
                shard[f.name] = np.load(io.BytesIO(_ok(next(small))), allow_pickle=False)
                _check_values(path, f.name, shard[f.name], rows[CAPTION])
            else:
                shard[f.name] = open_array(path, header)
        shards.append(shard)
    _check_against_job(cache, manifest)
    return shards


def _check_family(cache: str | os.PathLike, manifest: Mapping[str, Any], with_pooled: Sequence[str]) -> None:
    """The manifest's model family against its pooled width and the shards' arrays (SDXL's alone have pooled.npy)."""
    path = storage.join(cache, "manifest.json")
    base = manifest["base_model"]
    family, sdxl = base.get("family"), bool(base.get("pooled_dim"))
    if family is not None and (family == "sdxl") != sdxl:
        raise CacheError(
            f"{path} says the base model family is {family!r} with pooled_dim {base.get('pooled_dim')}, where an "
            f"SDXL-family model has a pooled text vector and no other has: {_REWRITE_MANIFEST}"
        )
    if sdxl and not with_pooled and manifest["shards"]:
        raise CacheError(
            f"{path} describes an SDXL-family model, but no shard holds pooled.npy: its arrays are an SD1/SD2-family "
            f"model's: {_REWRITE_MANIFEST}"
        )
    if not sdxl and with_pooled:
        raise CacheError(
            f"{path} describes an SD1/SD2-family model, but {storage.join(cache, with_pooled[0])} holds pooled.npy: "
            f"its arrays are an SDXL-family model's: {_REWRITE_MANIFEST}"
        )


def _check_against_job(cache: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """The manifest against job.json, which wrote the arrays: an edited manifest (scorers in another order) would
    have the trainer read a scorer's scores as another's."""
    path = storage.join(cache, "job.json")
    if not storage.exists(path):  # a cache copied without it: nothing to compare with
        return
    job = _json(path, storage.read_bytes(path))
    changed = [key for key in job if manifest.get(key) != job[key]] if isinstance(job, dict) else ["everything"]
    if not changed:
        return
    detail = ""
    if "scorers" in changed:
        names = [[s.get("name") for s in d.get("scorers", [])] for d in (manifest, job)]
        detail = f" (scorers {names[0]} in the manifest, {names[1]} in the arrays)"
    raise CacheError(
        f"{storage.join(cache, 'manifest.json')} differs from {path}, which wrote the arrays, in {changed}{detail}: "
        f"{_REWRITE_MANIFEST}"
    )


def _headers(paths: Sequence[str]) -> list[storage.NpyHeader]:
    try:
        return storage.read_npy_headers(paths)
    except ValueError as e:
        raise CacheError(f"{e}: {SHARD_DAMAGED}") from None


def _ok(chunk: bytes | BaseException) -> bytes:
    if isinstance(chunk, BaseException):
        raise chunk
    return chunk


def _check_header(path: str, header: storage.NpyHeader, size: int, f: Field, sizes: Mapping, rows: int) -> None:
    remake = SHARD_DAMAGED
    if size < header.file_size:
        raise CacheError(f"{path} is truncated ({size} of {header.file_size} bytes): {remake}")
    if header.dtype != f.dtype:
        raise CacheError(f"{path} holds {header.dtype}; the cache format has {f.dtype} there: {remake}")
    expected = row_shape(f, sizes)
    if tuple(header.shape[1:]) != expected:
        raise CacheError(f"{path} has rows of shape {tuple(header.shape[1:])}; the manifest says {expected}: {remake}")
    if header.shape[0] != rows:
        raise CacheError(f"{path} has {header.shape[0]} rows; the manifest says {rows}: {remake}")


def _check_values(path: str, name: str, array: np.ndarray, captions: int) -> None:
    remake = SHARD_DAMAGED
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise CacheError(
            f"{path} holds {bad} value{'s' * (bad > 1)} that {'is' if bad == 1 else 'are'} not finite: {remake}"
        )
    allowed = {"label_0": (0.0, 0.5, 1.0), "votes": (-1, 1), "label": (-1, 0, 1)}.get(name)
    if allowed is not None and not np.isin(array, allowed).all():
        raise CacheError(
            f"{path} holds values other than {', '.join(f'{a:g}' for a in allowed[:-1])} and {allowed[-1]:g}: {remake}"
        )
    if name == "caption_id" and array.size and (array.min() < 0 or array.max() >= captions):
        raise CacheError(f"{path}: caption ids up to {array.max()} for {captions} captions: {remake}")


def take(requests: Sequence[tuple[Any, np.ndarray]]) -> list[np.ndarray]:
    """``array[rows]`` for each (array, rows) of fields read by rows, fetched
    together and checked finite where they are floating point."""
    values = storage.take_rows(requests)
    for (array, rows), got in zip(requests, values, strict=True):
        url = array.url if isinstance(array, storage.RemoteArray) else str(getattr(array, "filename", array))
        check_finite(url, rows, got)
    return values


def check_finite(url: str, rows: np.ndarray, values: np.ndarray) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(
            np.asarray(rows).reshape(-1)[np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0]]
        )
        raise CacheError(f"{url} row {bad} is not finite: {SHARD_DAMAGED}")


def read_empty_prompt(cache: str | os.PathLike) -> dict[str, np.ndarray]:
    """The caption fields of the empty prompt (caption dropout), one row each, without the row axis."""
    directory = storage.join(cache, "empty_prompt")
    names = storage.list_names(directory)
    out = {}
    for f in FIELDS:
        if f.per != CAPTION:
            continue
        if f"{f.name}.npy" not in names:
            if f.sdxl_only:
                continue
            raise CacheError(f"{directory} lacks {f.name}.npy: the cache is damaged; {REMAKE}")
        path = storage.join(directory, f"{f.name}.npy")
        array = storage.load_array(path)
        check_finite(path, np.arange(len(array)), array)
        out[f.name] = array[0]
    return out
