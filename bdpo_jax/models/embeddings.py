"""Timestep and SDXL micro-conditioning embeddings (diffusers' ``embeddings.py``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bdpo_jax.models.layers import linear
from bdpo_jax.models.options import ModelOptions


def sinusoidal_embedding(
    timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> jax.Array:
    """The DDPM sinusoidal embedding, in fp32 whatever the compute dtype."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """Two-layer MLP on a sinusoidal (or concatenated SDXL) embedding."""

    def __init__(self, in_features: int, time_embed_dim: int, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.linear_1 = linear(in_features, time_embed_dim, opts, rngs)
        self.linear_2 = linear(time_embed_dim, time_embed_dim, opts, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(nnx.silu(self.linear_1(x)))
