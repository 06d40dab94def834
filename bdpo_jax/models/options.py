"""How the UNet runs (precision, attention kernel, rematerialisation), as
opposed to what it computes, which ``UNetConfig`` fixes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

AttentionImpl = Literal["auto", "xla", "cudnn"]
RematPolicy = Literal["none", "full", "save_dots"]

# Named like maxtext's remat policies: what the backward pass may keep from the
# forward pass instead of recomputing it.
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # keep nothing: recompute the whole block
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul/conv outputs
}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """``dtype`` is the compute dtype; parameters stay in ``param_dtype``."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionImpl = "auto"
    remat: RematPolicy = "none"

    def __post_init__(self):
        if self.attention not in ("auto", "xla", "cudnn"):
            raise ValueError(f"attention implementation {self.attention!r}: choose 'auto', 'xla' or 'cudnn'.")
        if self.remat not in ("none", *REMAT_POLICIES):
            raise ValueError(f"remat policy {self.remat!r}: choose one of {['none', *REMAT_POLICIES]}.")


def resolve_attention(impl: AttentionImpl, dtype: jnp.dtype, head_dim: int) -> str:
    """'auto' takes cuDNN flash attention where it runs (GPU, half precision,
    head dim a multiple of 8 up to 128) and XLA's attention elsewhere."""
    cudnn_ok = (
        jax.default_backend() == "gpu"
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and head_dim % 8 == 0
        and head_dim <= 128
    )
    if impl == "cudnn" and not cudnn_ok:
        raise ValueError(
            f"cuDNN attention needs a GPU, bf16/fp16 compute and a head dim that is a multiple "
            f"of 8 up to 128; here: backend {jax.default_backend()}, dtype {jnp.dtype(dtype).name}, "
            f"head dim {head_dim}. Use attention='xla' or 'auto'."
        )
    if impl == "auto":
        return "cudnn" if cudnn_ok else "xla"
    return impl


def remat(fn: Callable, policy: RematPolicy) -> Callable:
    """Wraps a block's forward in activation checkpointing under a named policy."""
    if policy == "none":
        return fn
    from flax import nnx

    return nnx.remat(fn, policy=REMAT_POLICIES[policy], prevent_cse=True)
