"""Spatial transformer of the SD UNet (diffusers' ``attention_processor.py``,
``attention.py`` and ``transformer_2d.py``). Activations are NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bdpo_jax.models.layers import Placeholder, conv, group_norm, layer_norm, linear
from bdpo_jax.models.options import ModelOptions, remat, resolve_attention


class Attention(nnx.Module):
    """Multi-head attention; self-attention when no context is given."""

    def __init__(
        self, query_dim: int, context_dim: int, heads: int, head_dim: int, opts: ModelOptions, *, rngs: nnx.Rngs
    ):
        inner = heads * head_dim
        self.heads = heads
        self.implementation = resolve_attention(opts.attention, opts.dtype, head_dim)
        self.to_q = linear(query_dim, inner, opts, rngs, use_bias=False)
        self.to_k = linear(context_dim, inner, opts, rngs, use_bias=False)
        self.to_v = linear(context_dim, inner, opts, rngs, use_bias=False)
        self.to_out = nnx.List([linear(inner, query_dim, opts, rngs), Placeholder()])

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        batch, length, _ = x.shape

        def split_heads(t: jax.Array) -> jax.Array:
            return t.reshape(*t.shape[:2], self.heads, -1)

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(context)), split_heads(self.to_v(context))
        # XLA's path computes logits and softmax in fp32, so `upcast_attention` holds either way.
        out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
        return self.to_out[0](out.reshape(batch, length, -1))


class GEGLU(nnx.Module):
    def __init__(self, dim_in: int, dim_out: int, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.proj = linear(dim_in, 2 * dim_out, opts, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
        return hidden * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    def __init__(self, dim: int, opts: ModelOptions, *, mult: int = 4, rngs: nnx.Rngs):
        # diffusers: net = [GEGLU, Dropout, Linear]
        self.net = nnx.List(
            [GEGLU(dim, mult * dim, opts, rngs=rngs), Placeholder(), linear(mult * dim, dim, opts, rngs)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nnx.Module):
    """Pre-LayerNorm self-attention, cross-attention on the text, GEGLU MLP."""

    def __init__(self, dim: int, heads: int, context_dim: int, opts: ModelOptions, *, rngs: nnx.Rngs):
        head_dim = dim // heads
        self.norm1 = layer_norm(dim, 1e-5, opts, rngs)
        self.attn1 = Attention(dim, dim, heads, head_dim, opts, rngs=rngs)
        self.norm2 = layer_norm(dim, 1e-5, opts, rngs)
        self.attn2 = Attention(dim, context_dim, heads, head_dim, opts, rngs=rngs)
        self.norm3 = layer_norm(dim, 1e-5, opts, rngs)
        self.ff = FeedForward(dim, opts, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """GroupNorm, project in, transformer blocks over the H*W tokens, project
    out, residual. SD1 projects with 1x1 convs, SD2/SDXL with linears: the same
    map on NHWC, kept apart only so the weights have diffusers' shapes."""

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        num_layers: int,
        groups: int,
        use_linear_projection: bool,
        opts: ModelOptions,
        *,
        rngs: nnx.Rngs,
    ):
        self.norm = group_norm(channels, groups, 1e-6, opts, rngs)
        if use_linear_projection:
            self.proj_in = linear(channels, channels, opts, rngs)
            self.proj_out = linear(channels, channels, opts, rngs)
        else:
            self.proj_in = conv(channels, channels, 1, opts, rngs)
            self.proj_out = conv(channels, channels, 1, opts, rngs)
        self.transformer_blocks = nnx.List(
            [BasicTransformerBlock(channels, heads, context_dim, opts, rngs=rngs) for _ in range(num_layers)]
        )
        self.remat_policy = opts.remat

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = self.proj_in(self.norm(x))
        h = h.reshape(batch, height * width, channels)
        block_forward = remat(BasicTransformerBlock.__call__, self.remat_policy)
        for block in self.transformer_blocks:
            h = block_forward(block, h, context)
        h = self.proj_out(h.reshape(batch, height, width, channels))
        return h + x
