"""Where a run's metrics go: JSON lines and TensorBoard events, from process 0.

In a gs:// or s3:// workdir both go through fsspec: objects cannot be appended
to, so ``metrics.jsonl`` is written again whole at each logged step (from the
lines kept in memory, not read back), and each
TensorBoard event file is uploaded whole at each flush (as tensorboardX's own
S3 and GCS writers do; these replace them, so that endpoints and credentials
come from fsspec as for every other file of the project)."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import jax

from bdpo_jax import storage


class MetricsWriter:
    """``WORKDIR/metrics.jsonl`` and ``WORKDIR/tensorboard``; other processes write nothing.

    A run resumed at step ``start`` first drops what an earlier attempt logged
    after ``start`` (lines of steps it trains again; TensorBoard's ``purge_step``),
    so that every step is logged once."""

    def __init__(self, workdir: str | os.PathLike, start: int = 0):
        self.path = storage.join(workdir, "metrics.jsonl")
        self.tensorboard_dir = storage.join(workdir, "tensorboard")
        self.enabled = jax.process_index() == 0
        self.tensorboard = None
        self.object_text: str | None = None  # in an object store: the whole metrics file so far
        if self.enabled:
            from tensorboardX import SummaryWriter

            kept = self._drop_lines_after(start)
            if not storage.is_local(workdir):
                _write_events_through_fsspec()
                self.object_text = kept
            self.tensorboard = SummaryWriter(self.tensorboard_dir, purge_step=start + 1 if start else None)

    def _drop_lines_after(self, start: int) -> str:
        """The lines kept, also written back where some were dropped."""
        if not storage.exists(self.path):
            return ""
        lines = storage.read_text(self.path).splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and _step(line) is not None and _step(line) <= start]
        if kept != lines:
            storage.write_text(self.path, "".join(kept))
        return "".join(kept)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **metrics}) + "\n"
        if self.object_text is None:
            storage.append_text(self.path, line)
        else:
            self.object_text += line
            storage.write_text(self.path, self.object_text)
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _step(line: str) -> int | None:
    """The step of a metrics line; None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class _EventObject:
    """A TensorBoard event file in an object store: what is written so far, uploaded whole at each flush."""

    def __init__(self, url: str):
        self.url, self.buffer = url, io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        storage.write_bytes(self.url, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EventObjects:
    """tensorboardX's writer factory interface (``record_writer.register_writer_factory``)."""

    def open(self, url: str) -> _EventObject:
        return _EventObject(url)

    def directory_check(self, url: str) -> None:  # an object store has no directories to make
        pass


def _write_events_through_fsspec() -> None:
    from tensorboardX import record_writer

    for protocol in ("gs", "s3"):
        record_writer.register_writer_factory(protocol, _EventObjects())
