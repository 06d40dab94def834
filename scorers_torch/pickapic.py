"""Preference pairs in the Pick-a-Pic v2 schema: ``caption``, ``jpg_0``, ``jpg_1``
(encoded image bytes), ``label_0``, ``label_1`` (1/0, or 0.5 each for a tie).

A source is a parquet file, a directory of parquet files (a hub snapshot
included), a ``datasets`` ``save_to_disk`` directory, or a hub dataset id
written ``hf://org/name`` (downloaded once where a hub is reachable). The
original hub copy is reported gone and mirrors name the columns otherwise:
``columns`` maps each of the schema's names to the source's.

Rows are read as they are: a row with a missing or impossible label or a
caption that is not UTF-8 becomes a ``Pair`` with a ``problem``, which the job
rejects and lists. ``describe`` fingerprints the source's files, so that a
resumed job notices a changed source. Images are decoded with bounded memory:
the size in the header is checked against a pixel count and an aspect ratio
before any pixel is decoded, and high-bit-depth images are scaled by their
value range into 8 bits. ``write_pairs`` writes pairs in this schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bdpo_jax import storage
from bdpo_jax.errors import UserError, one_line

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
HUB_PREFIX = "hf://"
MAX_IMAGE_PIXELS = 4096 * 4096  # 48 MiB as RGB; Pick-a-Pic's images are at most about 1024 x 1024
MAX_ASPECT_RATIO = 16.0
LABELS = (0.0, 0.5, 1.0)


class SourceError(UserError):
    """The preference data cannot be read as Pick-a-Pic pairs."""


@dataclasses.dataclass
class Pair:
    row: int
    caption: str
    jpg_0: bytes
    jpg_1: bytes
    label_0: float
    label_1: float = math.nan
    problem: str | None = None  # why the row cannot be used (the job rejects and lists it)


class PreferenceSource:
    """Random access to the rows of a Pick-a-Pic-schema table, by range."""

    def __init__(self, spec: str | os.PathLike, split: str = "train", columns: Mapping[str, str] | None = None):
        self.spec = str(spec)
        self.columns = {name: name for name in COLUMNS} | dict(columns or {})
        if unknown := sorted(set(self.columns) - set(COLUMNS)):
            raise SourceError(f"preference data columns {unknown} are not in the Pick-a-Pic schema {list(COLUMNS)}")
        path = Path(spec).expanduser()
        self.files: list[Path] = []
        if self.spec.startswith(HUB_PREFIX):
            files = _download_hub_dataset(self.spec[len(HUB_PREFIX) :], split)
        elif not path.exists():
            hub_like = self.spec.count("/") == 1 and not self.spec.startswith((".", "/", "~"))
            hint = f" (for a hub dataset write {HUB_PREFIX}{self.spec})" if hub_like else ""
            raise SourceError(f"preference data {spec} does not exist{hint}")
        elif path.is_file() and path.suffix == ".parquet":
            files = [path]
        elif path.is_dir():
            files = sorted(path.rglob("*.parquet"))
            arrow = sorted(path.rglob("*.arrow"))
            if not files and arrow:  # datasets' save_to_disk
                files = arrow
            else:
                split_files = [f for f in files if split in f.name or split in f.parent.name]
                files = split_files or files
        else:
            raise SourceError(
                f"preference data {spec}: not a parquet file, a directory of parquet or arrow files, or a hub id"
            )
        if not files:
            raise SourceError(f"preference data {spec}: no parquet files found")
        self.files = files
        self.table = read_table(files, self._columns_to_read).rename_columns(list(COLUMNS))

    def _columns_to_read(self, found: list[str]) -> list[str]:
        """The source's names of the schema's columns, in its order; an error naming any it lacks."""
        missing = {name: column for name, column in self.columns.items() if column not in found}
        if missing:
            flags = " ".join(f"--config.columns.{name}=..." for name in missing)
            raise SourceError(
                f"preference data {self.spec} lacks the column(s) {sorted(missing.values())} "
                f"(Pick-a-Pic's {sorted(missing)}); it has {found}. Name the source's columns with {flags}"
            )
        return [self.columns[name] for name in COLUMNS]

    def __len__(self) -> int:
        return self.table.num_rows

    def pairs(self, start: int, stop: int) -> list[Pair]:
        """Rows ``start:stop``; captions are read as bytes, so that one that is not UTF-8 rejects its row only."""
        import pyarrow as pa

        chunk = self.table.slice(start, stop - start)
        captions = chunk.column("caption").cast(pa.binary()).to_pylist()
        rows = chunk.select([c for c in COLUMNS if c != "caption"]).to_pylist()
        out = []
        for i, (caption_bytes, r) in enumerate(zip(captions, rows, strict=True)):
            try:
                caption, problem = (caption_bytes or b"").decode("utf-8"), None
            except UnicodeDecodeError:
                caption, problem = "", "caption is not UTF-8 text"
            label_0, label_1 = _label(r["label_0"]), _label(r["label_1"])
            problem = problem or label_problem(r["label_0"], r["label_1"])
            out.append(
                Pair(start + i, caption, _image_bytes(r["jpg_0"]), _image_bytes(r["jpg_1"]), label_0, label_1, problem)
            )
        return out

    def describe(self) -> dict[str, Any]:
        root = Path(self.spec).expanduser()
        root = root if root.is_dir() else root.parent
        files = {
            (str(f.relative_to(root)) if f.is_relative_to(root) else str(f)): file_fingerprint(f) for f in self.files
        }
        return {"spec": self.spec, "columns": self.columns, "rows": len(self), "files": files}


def write_pairs(
    path: str | os.PathLike,
    prompts: Sequence[str],
    images_0: Sequence[Image.Image | bytes],
    images_1: Sequence[Image.Image | bytes],
    label_0: Sequence[float] | np.ndarray,
) -> str | os.PathLike:
    """Pairs as one Pick-a-Pic v2-schema parquet file, the form ``PreferenceSource``
    reads, written whole or not at all (local or object storage). An image is PNG
    bytes of a PIL image (lossless), or bytes already encoded (a JPEG, or a damaged
    file a test wants) as they are; ``label_1`` is ``1 - label_0``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    label_0 = np.asarray(label_0, np.float64)
    if not len(prompts) == len(images_0) == len(images_1) == len(label_0):
        raise ValueError(
            f"write_pairs: {len(prompts)} prompts, {len(images_0)} and {len(images_1)} images, "
            f"{len(label_0)} labels: give one of each per pair"
        )
    table = pa.table(
        {
            "caption": list(prompts),
            "jpg_0": [_encoded(image) for image in images_0],
            "jpg_1": [_encoded(image) for image in images_1],
            "label_0": label_0,
            "label_1": 1.0 - label_0,
        }
    )
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    storage.write_bytes(path, buffer.getvalue().to_pybytes())
    return path


def _encoded(image: Image.Image | bytes) -> bytes:
    if isinstance(image, bytes):
        return image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class TableError(UserError):
    """A parquet or arrow file cannot be read: cut short, still being written, or not one."""


def read_table(files: Sequence[Path], columns: Callable[[list[str]], list[str]]) -> Any:
    """Columns of parquet files, or of a ``datasets`` ``save_to_disk`` folder's arrow files, as one table:
    ``columns`` gets the names the files have and returns those to read (it raises where one is missing).
    A file that cannot be read is a ``TableError`` naming it."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        if files[0].suffix == ".arrow":
            table = pa.concat_tables([pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files])
            return table.select(columns(table.column_names))
        dataset = ds.dataset([str(f) for f in files], format="parquet")
        return dataset.to_table(columns=columns(dataset.schema.names))
    except (pa.ArrowException, OSError) as e:  # pyarrow raises OSError for a cut-short arrow stream
        where = files[0] if len(files) == 1 else f"one of the {len(files)} files in {os.path.commonpath(files)}"
        raise TableError(
            f"{where} cannot be read ({one_line(str(e))}): if a download or copy was cut short, fetch it again"
        ) from None


def _label(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def label_problem(label_0: Any, label_1: Any) -> str | None:
    """Why a row's human labels cannot be used, or None: each is 0, 0.5 or 1 and they sum to 1."""
    for name, value in (("label_0", label_0), ("label_1", label_1)):
        if value is None:
            return f"{name} is missing"
        number = _label(value)
        if not math.isfinite(number):
            return f"{name} {value} is not finite"
        if number not in LABELS:
            return f"{name} {number:g} is not 0, 0.5 or 1"
    if float(label_0) + float(label_1) != 1.0:
        return f"label_0 + label_1 = {float(label_0) + float(label_1):g}, not 1"
    return None


def file_fingerprint(path: Path, probe: int = 2**20) -> str:
    """Size and a hash of what identifies the file's contents cheaply: a parquet
    file's footer (its schema, row groups, offsets and statistics), else its
    first and last MiB. A touch or a copy keeps it; an edit of the rows changes it."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if path.suffix == ".parquet" and size >= 12:
            f.seek(size - 8)
            footer = int.from_bytes(f.read(4), "little")
            f.seek(max(size - 8 - footer, 0))
            digest.update(f.read(footer + 8))
        else:
            digest.update(f.read(probe))
            f.seek(max(size - probe, 0))
            digest.update(f.read(probe))
    return f"{size}:{digest.hexdigest()[:32]}"


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, dict):  # a datasets Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return value or b""


class ImageTooLargeError(ValueError):
    """An image whose header promises more pixels (or a thinner shape) than the limits allow."""


def decode_image(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO
) -> Image.Image:
    """An 8-bit RGB image, decoded fully now, so that a truncated file fails here
    and not later. The size is checked from the header first: decoding never
    takes more than ``max_pixels`` pixels' memory, however small the file."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    shape = f"image of {height}x{width} pixels (height x width)"
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{shape} is above max_image_pixels {max_pixels}")
    if max(width, height) > max_aspect_ratio * max(min(width, height), 1) or not width * height:
        raise ImageTooLargeError(f"{shape}: its aspect ratio is above max_aspect_ratio {max_aspect_ratio:g}")
    image.load()
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit and 32-bit greyscale are scaled by their type's range
    (Pillow's ``convert`` clips them at 255: nearly all white); float images by
    [0, 1] when they lie in it, else by their own range."""
    if image.mode in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1", "LAB", "HSV", "RGBX", "RGBa"):
        return image.convert("RGB")
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif image.mode == "I" and values.size and values.min() >= 0 and values.max() <= 65535:
        low, high = 0.0, 65535.0  # a 16-bit PNG that Pillow opened as 32-bit
    elif image.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
        low, high = 0.0, 1.0
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    scaled = np.round((values - low) * (255.0 / max(high - low, 1e-12)))
    grey = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    if grey.ndim == 3 and grey.shape[-1] >= 3:
        return Image.fromarray(grey[..., :3], "RGB")
    return Image.fromarray(grey if grey.ndim == 2 else grey[..., 0], "L").convert("RGB")


def _download_hub_dataset(repo_id: str, split: str) -> list[Path]:
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(repo_id, repo_type="dataset", allow_patterns=[f"*{split}*.parquet", "*.json"])
    except Exception as e:  # no network, unknown repo, ...
        raise SourceError(
            f"could not download the hub dataset {repo_id!r} ({e}); download it, or a mirror, where a hub is "
            "reachable and pass the local directory instead (a mirror's column names go in --config.columns.*)"
        ) from e
    return sorted(Path(root).rglob("*.parquet"))
