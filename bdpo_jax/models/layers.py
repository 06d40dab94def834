"""Flax layers built with the UNet's dtypes and PyTorch's numerics.

Parameter names follow flax (``kernel``, ``scale``); ``diffusers_layout.py`` maps them to
diffusers' (``weight``) mechanically.
"""

from __future__ import annotations

from flax import nnx

from bdpo_jax.models.options import ModelOptions


def linear(
    in_features: int, out_features: int, opts: ModelOptions, rngs: nnx.Rngs, use_bias: bool = True
) -> nnx.Linear:
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs
    )


def conv(
    in_features: int, out_features: int, kernel_size: int, opts: ModelOptions, rngs: nnx.Rngs, stride: int = 1
) -> nnx.Conv:
    """torch's Conv2d(padding=k // 2): explicit symmetric padding, unlike 'SAME'
    which pads an even input asymmetrically at stride 2."""
    pad = kernel_size // 2
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        dtype=opts.dtype,
        param_dtype=opts.param_dtype,
        rngs=rngs,
    )


def group_norm(channels: int, groups: int, eps: float, opts: ModelOptions, rngs: nnx.Rngs) -> nnx.GroupNorm:
    # Two-pass variance: the one-pass E[x^2] - E[x]^2 loses digits that parity needs.
    return nnx.GroupNorm(
        channels,
        num_groups=groups,
        epsilon=eps,
        use_fast_variance=False,
        dtype=opts.dtype,
        param_dtype=opts.param_dtype,
        rngs=rngs,
    )


def layer_norm(features: int, eps: float, opts: ModelOptions, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features, epsilon=eps, use_fast_variance=False, dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs
    )


class Placeholder(nnx.Module):
    """Holds the index of a parameter-free torch module (Dropout) in a list, so
    that list indices, and therefore parameter names, match diffusers'."""
