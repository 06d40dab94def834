"""Prompt sets from local files: the paper's three benchmarks, a text file, or an inline list.

    pickapic      Pick-a-Pic: a parquet file, a directory of parquet files (a hub snapshot) or a
                  ``datasets`` ``save_to_disk`` directory; the ``caption`` column of ``split``
                  (the paper: ``validation_unique``, 500 prompts)
    partiprompts  PartiPrompts.tsv, ``Prompt`` column (1,632 prompts)
    hpdv2         HPDv2's benchmark directory: anime.json, concept-art.json, paintings.json,
                  photo.json, each a JSON list of 800 prompts, read in that order
    lines         a text file, one prompt per line
    inline        the config's ``prompts`` tuple

A prompt's index is its position in the source (HPDv2: in the four lists read
in order), so image file names and score rows stay meaningful whatever is
skipped. Empty and repeated prompts are skipped and counted; ``limit`` keeps a
random subset of that size, drawn with ``sample_seed`` and kept in source order
(PartiPrompts is sorted by category, so its first N prompts would not do).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from bdpo_jax.errors import UserError
from scorers_torch.pickapic import read_table

KINDS = ("pickapic", "partiprompts", "hpdv2", "lines", "inline")
DEFAULT_COLUMN = {"pickapic": "caption", "partiprompts": "Prompt"}
HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")


class PromptSetError(UserError):
    """A prompt file is missing, unreadable, or lacks the expected column."""


@dataclasses.dataclass(frozen=True)
class PromptSet:
    name: str
    indices: tuple[int, ...]  # position of each prompt in the source
    texts: tuple[str, ...]
    skipped: dict[str, int]  # "empty", "duplicate", "beyond_limit"
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self) -> dict[str, Any]:
        """What the set is; a resumed evaluation must find the same prompts under the same indices."""
        digest = hashlib.sha256(json.dumps([self.indices, self.texts]).encode()).hexdigest()
        return {"source": self.source, "prompts": len(self), "skipped": self.skipped, "sha256": digest}


def load_prompt_set(name: str, spec: ml_collections.ConfigDict) -> PromptSet:
    """One set from its config entry (kind, path, column, split, limit, sample_seed, prompts)."""
    kind = spec.kind
    if kind not in KINDS:
        raise PromptSetError(f"prompt set {name!r}: kind {kind!r} is not one of {KINDS}")
    if kind == "inline":
        raw, source = list(spec.get("prompts") or ()), "inline"
    else:
        if not spec.get("path"):
            raise PromptSetError(f"prompt set {name!r} ({kind}) has no path: set --config.prompts.{name}.path")
        path = Path(spec.path).expanduser().resolve()
        if not path.exists():
            raise PromptSetError(f"prompt set {name!r}: {path} does not exist (--config.prompts.{name}.path)")
        source = f"{kind}:{path}"
        column = spec.get("column") or DEFAULT_COLUMN.get(kind)
        if kind == "pickapic":
            raw = _table_column(path, column, spec.get("split") or "validation_unique", name)
        elif kind == "partiprompts":
            raw = _tsv_column(path, column, name)
        elif kind == "hpdv2":
            raw = _hpdv2(path, name)
        else:
            raw = _read_text(path, name).splitlines()
    return select_prompts(name, raw, source, spec.get("limit"), spec.get("sample_seed", 0))


def select_prompts(name: str, raw: Sequence[Any], source: str, limit: int | None, sample_seed: int) -> PromptSet:
    seen: set[str] = set()
    indices, texts = [], []
    skipped = {"empty": 0, "duplicate": 0, "beyond_limit": 0}
    for index, value in enumerate(raw):
        text = (value or "").strip() if isinstance(value, str) or value is None else str(value).strip()
        if not text:
            skipped["empty"] += 1
        elif text in seen:
            skipped["duplicate"] += 1
        else:
            seen.add(text)
            indices.append(index)
            texts.append(text)
    if limit is not None and limit < len(texts):
        keep = np.sort(np.random.default_rng(sample_seed).choice(len(texts), limit, replace=False))
        skipped["beyond_limit"] = len(texts) - limit
        indices, texts = [indices[i] for i in keep], [texts[i] for i in keep]
    if not texts:
        raise PromptSetError(f"prompt set {name!r} ({source}) has no prompts left after skipping {skipped}")
    return PromptSet(name, tuple(indices), tuple(texts), skipped, source)


def _table_column(path: Path, column: str, split: str, name: str) -> list[Any]:
    """One column of a parquet file, a directory of parquet files, or a save_to_disk directory."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(path.rglob("*.parquet")) or sorted(path.rglob("*.arrow"))
        in_split = [f for f in files if f.name.startswith(f"{split}-") or f.stem == split or f.parent.name == split]
        if not in_split and files:
            raise PromptSetError(
                f"prompt set {name!r}: {path} has no files of split {split!r} (names starting '{split}-' or in a "
                f"folder {split}/); set --config.prompts.{name}.split, or give the file itself"
            )
        files = in_split
    if not files:
        raise PromptSetError(f"prompt set {name!r}: no parquet or arrow files in {path}")

    def the_column(found: list[str]) -> list[str]:
        if column not in found:
            raise PromptSetError(
                f"prompt set {name!r}: {path} has no column {column!r} (it has {found}); "
                f"set --config.prompts.{name}.column"
            )
        return [column]

    return read_table(files, the_column).column(column).to_pylist()


def _read_text(path: Path, name: str) -> str:
    """A prompt file's text; one that is not UTF-8 text, or a folder, is an error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptSetError(
            f"prompt set {name!r}: {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 "
            f"(iconv -f <its encoding> -t UTF-8)"
        ) from None
    except IsADirectoryError:
        raise PromptSetError(f"prompt set {name!r}: {path} is a folder; give prompts.{name}.path a file") from None


def _tsv_column(path: Path, column: str, name: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(_read_text(path, name), newline=""), delimiter="\t")
    if column not in (reader.fieldnames or []):
        raise PromptSetError(
            f"prompt set {name!r}: {path} has no column {column!r} (it has {reader.fieldnames}); "
            f"set --config.prompts.{name}.column"
        )
    return [row[column] for row in reader]


def _hpdv2(path: Path, name: str) -> list[str]:
    missing = [f"{style}.json" for style in HPDV2_STYLES if not (path / f"{style}.json").is_file()]
    if missing:
        raise PromptSetError(
            f"prompt set {name!r}: {path} lacks {missing}; give HPDv2's benchmark folder "
            "(huggingface.co/datasets/zhwang/HPDv2, benchmark/*.json)"
        )
    prompts: list[str] = []
    for style in HPDV2_STYLES:
        try:
            values = json.loads(_read_text(path / f"{style}.json", name))
        except json.JSONDecodeError as e:
            raise PromptSetError(f"prompt set {name!r}: {path / style}.json is not valid JSON ({e})") from None
        if not isinstance(values, list):
            raise PromptSetError(f"prompt set {name!r}: {path / style}.json is not a JSON list of prompts")
        prompts.extend(values)
    return prompts
