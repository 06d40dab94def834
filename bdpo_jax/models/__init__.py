"""Flax NNX UNet for SD1.x, SD2.x and SDXL, and diffusers weight mapping.

The names below are imported when first used, so that the modules without JAX
(``config``, ``presets``, ``unet_files``, ``diffusers_layout``) can be imported
through this package without importing flax (the torch side reads the presets).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelOptions": "options",
    "UNet2DConditionModel": "unet",
    "UNetConfig": "config",
    "UnsupportedConfigError": "config",
    "WeightsError": "unet_files",
    "abstract_unet": "weights",
    "diffusers_state_dict": "weights",
    "load_params": "weights",
    "load_unet": "weights",
    "params_from_diffusers": "weights",
    "random_unet": "weights",
    "read_unet": "weights",
    "save_unet": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
