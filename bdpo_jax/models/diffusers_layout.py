"""Our UNet parameters under diffusers' names and layouts, and back. numpy only.

Our parameter paths are diffusers' module paths (``down_blocks.0.attentions.0
.proj_in``); only the leaf differs, and mechanically:

    flax ``kernel`` (conv, HWIO)  <->  torch ``weight`` (OIHW)
    flax ``kernel`` (linear, IO)  <->  torch ``weight`` (OI)
    flax ``scale`` (norm)         <->  torch ``weight``
    flax ``bias``                 <->  torch ``bias``
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bdpo_jax.models.unet_files import WeightsError


def diffusers_key(path: tuple) -> str:
    """The diffusers name of the parameter at our ``path``."""
    *modules, leaf = (str(p) for p in path)
    return ".".join([*modules, "bias" if leaf == "bias" else "weight"])


def to_diffusers_layout(array: np.ndarray) -> np.ndarray:
    """A flax leaf in torch's layout (the transform is fixed by its rank)."""
    if array.ndim == 4:
        return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array


def from_diffusers_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if array.ndim == 2:
        return array.T
    return array


def diffusers_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)


def check_names_and_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> None:
    """Every missing key, unexpected key and shape mismatch between the model's
    parameters (diffusers names, our shapes) and a file's tensors, reported at once."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = []
    for key in sorted(set(expected) & set(found)):
        want = diffusers_shape(expected[key])
        if tuple(found[key]) != want:
            mismatched.append(f"{key}: file {tuple(found[key])}, model {want}")
    if missing or unexpected or mismatched:
        raise WeightsError(_report(missing, unexpected, mismatched))


def _report(missing: list[str], unexpected: list[str], mismatched: list[str], show: int = 20) -> str:
    lines = ["UNet weights do not match the UNet config:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f"... and {len(items) - show} more" if len(items) > show else ""
            lines.append(f"  {len(items)} {title}:")
            lines.extend(f"    {item}" for item in items[:show])
            if more:
                lines.append(f"    {more}")
    lines.append("Check that config.json and the weights come from the same model.")
    return "\n".join(lines)
