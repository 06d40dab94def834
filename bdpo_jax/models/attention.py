"""Spatial transformer of the SD UNet (diffusers' ``attention_processor.py``,
``attention.py`` and ``transformer_2d.py``), and the attention kernel chosen for
the platform the step is compiled for. Activations are NHWC.

Kernels: XLA's attention everywhere; on GPU cuDNN's fused flash attention
(bf16/fp16, head dim a multiple of 8 up to 128), odd lengths such as CLIP's 77
tokens padded to even with the kernel's own length mask (its backward refuses
odd lengths); on TPU Pallas's splash attention where both lengths are multiples
of 128 (SD's self-attention; the 77-token cross-attention and the 8x8 level
stay on XLA, whose maps there are small).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bdpo_jax.models.layers import Placeholder, conv, group_norm, layer_norm, linear
from bdpo_jax.models.options import AttentionImpl, ModelOptions, remat
from bdpo_jax.sharding import batch_parallel

HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
SPLASH_LANES = 128  # splash's blocks are multiples of the TPU's 128 lanes
SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides a length is used


def cudnn_fits(dtype: jnp.dtype, head_dim: int) -> bool:
    """Where jax's cuDNN flash attention trains (its head-dim check, as a deviceless
    compile applies it: no Hopper-only 256)."""
    return jnp.dtype(dtype) in HALF and head_dim % 8 == 0 and head_dim <= 128


def check_attention(impl: AttentionImpl, platform: str, dtype: jnp.dtype, head_dim: int) -> None:
    """An explicitly requested kernel that cannot run on the target is an error, not a fallback."""
    if impl == "cudnn" and not (platform == "gpu" and cudnn_fits(dtype, head_dim)):
        raise ValueError(
            f"cuDNN attention needs a GPU, bf16/fp16 compute and a head dim that is a multiple "
            f"of 8 up to 128; here: platform {platform}, dtype {jnp.dtype(dtype).name}, "
            f"head dim {head_dim}. Use attention='xla' or 'auto'."
        )
    if impl == "splash" and platform != "tpu":
        raise ValueError(f"splash attention is a TPU kernel; the platform is {platform}: use attention 'xla' or 'auto'")


def choose_attention(
    impl: AttentionImpl, platform: str, dtype: jnp.dtype, head_dim: int, q_len: int, kv_len: int
) -> str:
    """The kernel one attention call runs: 'cudnn', 'splash' or 'xla'."""
    if impl in ("auto", "cudnn") and platform == "gpu" and cudnn_fits(dtype, head_dim):
        return "cudnn"
    if impl in ("auto", "splash") and platform == "tpu" and q_len % SPLASH_LANES == 0 and kv_len % SPLASH_LANES == 0:
        return "splash"
    return "xla"


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "cudnn") -> jax.Array:
    """Attention over (B, T, heads, D) with T and S padded to even lengths, the padding
    masked by the kernel's sequence lengths: every query attends to exactly its keys."""
    t, s = q.shape[1], k.shape[1]
    if t % 2 == 0 and s % 2 == 0:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)

    def pad(x):
        return jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))

    def lengths(n: int) -> jax.Array:
        # n for every sample, computed from q's values so that under vmap (the stacked reference)
        # it is batched as q is: jax's cuDNN batcher folds the vmapped axis into every argument's batch
        return jnp.where(jnp.isnan(q[:, 0, 0, 0]), n, n).astype(jnp.int32)

    out = jax.nn.dot_product_attention(
        pad(q),
        pad(k),
        pad(v),
        query_seq_lengths=lengths(t),
        key_value_seq_lengths=lengths(s),
        implementation=implementation,
    )
    return out[:, :t]


def _splash_block(length: int) -> int:
    return next(b for b in SPLASH_BLOCKS if length % b == 0)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, interpret: bool = False) -> jax.Array:
    """Pallas's TPU splash attention over (B, T, heads, D), lengths multiples of 128,
    no mask; each device runs it on its share of the batch. ``interpret``: run the
    kernel in Pallas's interpreter (a CPU check of its numerics)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    _, t, heads, head_dim = q.shape
    s = k.shape[1]
    bq, bkv = _splash_block(t), _splash_block(s)
    blocks = splash.BlockSizes(
        block_q=bq, block_kv=bkv, block_q_dkv=bq, block_kv_dkv=bkv, block_q_dq=bq, block_kv_dq=bkv
    )
    mask = splash.MultiHeadMask([splash.FullMask((t, s))] * heads)
    kernel = splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)
    heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # (B, heads, T, D): the kernel's layout
    scale = np.asarray(1 / np.sqrt(head_dim), q.dtype)  # the kernel does not scale the logits

    def local(q, k, v):
        return heads_first(jax.vmap(kernel)(heads_first(q) * scale, heads_first(k), heads_first(v)))

    return batch_parallel(local, q, k, v)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, kernel: str) -> jax.Array:
    """Softmax attention over (B, T, heads, D) by the chosen kernel; XLA's and
    splash's compute logits and softmax in fp32 (``upcast_attention`` holds)."""
    if kernel == "cudnn":
        return padded_attention(q, k, v)
    if kernel == "splash":
        return splash_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


class Attention(nnx.Module):
    """Multi-head attention; self-attention when no context is given."""

    def __init__(
        self, query_dim: int, context_dim: int, heads: int, head_dim: int, opts: ModelOptions, *, rngs: nnx.Rngs
    ):
        inner = heads * head_dim
        self.heads = heads
        self.platform = opts.platform or jax.default_backend()
        check_attention(opts.attention, self.platform, opts.dtype, head_dim)
        self.requested = opts.attention
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
        kernel = choose_attention(self.requested, self.platform, q.dtype, q.shape[-1], length, k.shape[1])
        out = attention(q, k, v, kernel)
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
