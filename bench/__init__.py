"""Benchmarks, and the parity check against diffusers' PyTorch UNet (``bench.parity``): the code that
imports both frameworks. Each benchmark prints its result as JSON and, with ``--out``, writes it there."""

import json
from pathlib import Path
from typing import Any


def report(result: Any, out: str | None) -> None:
    """Prints ``result`` as JSON and writes the same to ``out`` when given (a device run's $OUT)."""
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if out:
        Path(out).write_text(text)
