"""How the UNet runs (precision, attention kernel, rematerialisation), as
opposed to what it computes, which ``UNetConfig`` fixes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

AttentionImpl = Literal["auto", "xla", "cudnn", "splash"]
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
PLATFORMS = ("cpu", "gpu", "tpu")
RematPolicy = Literal["none", "full", "save_dots"]

# Named like maxtext's remat policies: what the backward pass may keep from the
# forward pass instead of recomputing it.
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # keep nothing: recompute the whole block
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul/conv outputs
}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """``dtype`` is the compute dtype; parameters stay in ``param_dtype``. ``platform``
    is the one the model is compiled for ("cpu", "gpu", "tpu"; None: the process's
    default backend): an ahead-of-time compile for a TPU or GPU picks the kernels
    the real run will run (``attention.py``)."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionImpl = "auto"
    remat: RematPolicy = "none"
    platform: str | None = None

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {self.attention!r}: choose one of {ATTENTION_IMPLEMENTATIONS}.")
        if self.platform not in (None, *PLATFORMS):
            raise ValueError(f"platform {self.platform!r}: choose one of {PLATFORMS} (or None: the default backend).")
        if self.remat not in ("none", *REMAT_POLICIES):
            raise ValueError(f"remat policy {self.remat!r}: choose one of {['none', *REMAT_POLICIES]}.")


def remat(fn: Callable, policy: RematPolicy) -> Callable:
    """Wraps a block's forward in activation checkpointing under a named policy."""
    if policy == "none":
        return fn
    from flax import nnx

    return nnx.remat(fn, policy=REMAT_POLICIES[policy], prevent_cse=True)
