"""The evaluation's output folder: what is written where, and the check that a
resumed or extended run adds to it without mixing in anything made otherwise.

    OUT/
      manifest.json                        how every image and score was made (checked on every run)
      images/SET/MODEL/00042_1234567.png   prompt index 42 of SET, seed 1234567
      scores/SET/MODEL/00000.parquet       one block of prompts' rows, written whole (resume unit)
      scores.parquet                       every row: model, prompt_set, prompt_index, image_index,
                                           seed, prompt, image, one float column per scorer
      tables.md, win_rates.csv, model_scores.csv, results.json
      report/grid-SET.png, SET.html, win_rates-SET.png

OUT may be a local path or a ``gs://`` / ``s3://`` URL (``bdpo_jax.storage``,
fsspec): paths under a local OUT are ``Path``s, under a URL strings. Files
appear whole or not at all: locally written under a temporary name and renamed
into place, in a bucket uploaded as one object each; so a killed run leaves
whole files only. Models, prompt sets and scorers can be added to an output
folder later; one already there must be described exactly as before.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bdpo_jax import records, storage
from bdpo_jax.errors import UserError
from bdpo_jax.records import ABSENT

Location = Path | str  # a local path, or a URL in object storage

# Columns of the score table that are not scores.
ROW_COLUMNS = ("model", "prompt_set", "prompt_index", "image_index", "seed", "prompt", "image")
CHECKED_SECTIONS = ("models", "prompt_sets", "scorers")


class OutputMismatchError(UserError):
    """The output folder holds images or scores made with other settings."""


def under(root: Location, *parts: str) -> Location:
    """``root/parts``: a ``Path`` under a local root, a URL under a URL."""
    return root.joinpath(*parts) if isinstance(root, Path) else storage.join(root, *parts)


class OutputDir:
    def __init__(self, root: str | os.PathLike):
        root = os.fspath(root)
        self.root: Location = root.rstrip("/") if "://" in root else Path(root).expanduser()
        self.manifest = under(self.root, "manifest.json")
        self.scores = under(self.root, "scores.parquet")

    def image(self, prompt_set: str, model: str, prompt_index: int, seed: int) -> Location:
        return under(self.images(prompt_set, model), f"{prompt_index:05d}_{seed}.png")

    def images(self, prompt_set: str, model: str) -> Location:
        return under(self.root, "images", prompt_set, model)

    def unit_scores(self, prompt_set: str, model: str, block: int) -> Location:
        return under(self.root, "scores", prompt_set, model, f"{block:05d}.parquet")

    def grid(self, prompt_set: str) -> Location:
        return under(self.root, "report", f"grid-{prompt_set}.png")

    def page(self, prompt_set: str) -> Location:
        return under(self.root, "report", f"{prompt_set}.html")

    def chart(self, prompt_set: str) -> Location:
        return under(self.root, "report", f"win_rates-{prompt_set}.png")

    def relative(self, path: Location) -> str:
        return posixpath.relpath(Path(path).as_posix(), Path(self.root).as_posix())

    def check_and_extend_manifest(self, job: dict[str, Any]) -> dict[str, Any]:
        """Merges ``job`` into manifest.json; refuses where it contradicts what is there."""
        previous = storage.read_json(self.manifest) if storage.exists(self.manifest) else {}
        job = json.loads(json.dumps(job))  # tuples -> lists, as stored
        if differing := records.changes(
            previous.get("generation", job["generation"]), job["generation"], absent=ABSENT
        ):
            raise OutputMismatchError(
                f"{self.root} holds images made with other generation settings (differing: {sorted(differing)}); "
                "use a new output_dir, or the settings in its manifest.json"
            )
        merged = {**previous, **job}
        for section in CHECKED_SECTIONS:
            before, now = previous.get(section, {}), job.get(section, {})
            for name in before.keys() & now.keys():
                if records.changes(before[name], now[name], absent=ABSENT):
                    raise OutputMismatchError(
                        f"{self.root} holds {section} entry {name!r} made otherwise: was {before[name]}, now "
                        f"{now[name]}. Give it another name, use a new output_dir, or delete its files there"
                    )
            merged[section] = {**before, **now}
        storage.write_json(self.manifest, merged)
        return merged

    def forget_model(self, model: str) -> None:
        """Removes a model's images, scores and manifest entry (to make them again, of a changed model)."""
        if not storage.exists(self.manifest):
            return
        manifest = storage.read_json(self.manifest)
        for prompt_set in manifest.get("prompt_sets", {}):
            for folder in (self.images(prompt_set, model), under(self.root, "scores", prompt_set, model)):
                storage.remove(folder)
        manifest.get("models", {}).pop(model, None)
        storage.write_json(self.manifest, manifest)

    def existing_images(self, prompt_set: str, model: str) -> set[str]:
        """The images of a set and model already made, as paths: one listing (not a request per image)."""
        folder = self.images(prompt_set, model)
        return {os.fspath(under(folder, name)) for name in storage.list_names(folder) if name.endswith(".png")}


def save_image(image: Image.Image, path: Location) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    storage.write_bytes(path, buffer.getvalue())


def read_image(path: Location) -> Image.Image:
    """An image file, read whole, as RGB."""
    with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
        return image.convert("RGB")


def write_table(table: pa.Table, path: Location) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    storage.write_bytes(path, buffer.getvalue().to_pybytes())


def read_table(path: Location) -> pa.Table | None:
    return pq.read_table(pa.BufferReader(storage.read_bytes(path))) if storage.exists(path) else None


def table_columns(path: Location) -> list[str]:
    return pq.read_schema(pa.BufferReader(storage.read_bytes(path))).names if storage.exists(path) else []
