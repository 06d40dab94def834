"""Residual block and resamplers of the SD UNet (diffusers' ``resnet.py``,
``downsampling.py``, ``upsampling.py``). Activations are NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bdpo_jax.models.layers import conv, group_norm, linear
from bdpo_jax.models.options import ModelOptions


class ResnetBlock2D(nnx.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        opts: ModelOptions,
        *,
        output_scale_factor: float = 1.0,
        rngs: nnx.Rngs,
    ):
        self.norm1 = group_norm(in_channels, groups, eps, opts, rngs)
        self.conv1 = conv(in_channels, out_channels, 3, opts, rngs)
        self.time_emb_proj = linear(temb_channels, out_channels, opts, rngs)
        self.norm2 = group_norm(out_channels, groups, eps, opts, rngs)
        self.conv2 = conv(out_channels, out_channels, 3, opts, rngs)
        self.conv_shortcut = conv(in_channels, out_channels, 1, opts, rngs) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.time_emb_proj(nnx.silu(temb))[:, None, None, :]
        h = self.conv2(nnx.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nnx.Module):
    """Stride-2 3x3 conv (diffusers names it ``conv``; padding 1)."""

    def __init__(self, channels: int, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, 3, opts, rngs, stride=2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample2D(nnx.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, 3, opts, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)
