"""The attention kernels a step compiled for a GPU or a TPU runs, checked on
this CPU: the choice follows the target, not the process's backend; cuDNN's
padding of odd lengths masks exactly the padding; Pallas's splash attention
(in its interpreter) computes XLA's attention and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdpo_jax.models.attention import check_attention, choose_attention, padded_attention, splash_attention


def test_the_kernel_follows_the_target_platform():
    bf16 = jnp.bfloat16
    assert choose_attention("auto", "gpu", bf16, 64, 4096, 4096) == "cudnn"
    assert choose_attention("auto", "gpu", bf16, 64, 4096, 77) == "cudnn"  # padded to 78
    assert choose_attention("auto", "gpu", bf16, 160, 256, 256) == "xla"  # SD1.5's deepest head dim
    assert choose_attention("auto", "gpu", jnp.float32, 64, 4096, 4096) == "xla"
    assert choose_attention("auto", "tpu", bf16, 40, 4096, 4096) == "splash"
    assert choose_attention("auto", "tpu", bf16, 40, 4096, 77) == "xla"  # cross-attention: a small map
    assert choose_attention("auto", "tpu", bf16, 160, 64, 64) == "xla"  # 8x8 latents: below splash's 128
    assert choose_attention("auto", "cpu", bf16, 64, 4096, 4096) == "xla"
    assert choose_attention("xla", "tpu", bf16, 64, 4096, 4096) == "xla"
    check_attention("cudnn", "gpu", bf16, 64)
    with pytest.raises(ValueError, match="cuDNN attention needs a GPU"):
        check_attention("cudnn", "cpu", bf16, 64)
    with pytest.raises(ValueError, match="head dim 160"):
        check_attention("cudnn", "gpu", bf16, 160)
    with pytest.raises(ValueError, match="splash attention is a TPU kernel"):
        check_attention("splash", "gpu", bf16, 64)


def random_qkv(q_len: int, kv_len: int, heads: int = 2, head_dim: int = 16, batch: int = 2):
    rng = np.random.default_rng(0)
    shapes = ((batch, q_len, heads, head_dim), (batch, kv_len, heads, head_dim), (batch, kv_len, heads, head_dim))
    return tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes)


def output_and_grads(attention, q, k, v):
    """The attention's output, and the gradients for q, k and v of a random projection of it."""
    out, vjp = jax.vjp(attention, q, k, v)
    return out, vjp(jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), out.dtype))


def xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def test_odd_lengths_padded_under_the_length_mask_attend_to_exactly_their_keys():
    """The padding cuDNN's backward needs (77 text tokens -> 78), masked by sequence lengths: run
    through XLA's implementation of the same mask here, it must change nothing, forward or backward."""
    q, k, v = random_qkv(9, 77)
    (padded, padded_grads), (plain, plain_grads) = (
        output_and_grads(f, q, k, v) for f in (lambda *a: padded_attention(*a, implementation="xla"), xla)
    )
    np.testing.assert_allclose(padded, plain, rtol=1e-6)
    for a, b in zip(padded_grads, plain_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_splash_attention_matches_xla_forward_and_gradients():
    """The TPU kernel in Pallas's interpreter, two 128-blocks of queries and keys (about 6 s)."""
    q, k, v = random_qkv(256, 256, head_dim=40)  # SD1.5's first head dim: not a multiple of 128
    (splash, splash_grads), (plain, plain_grads) = (
        output_and_grads(f, q, k, v) for f in (lambda *a: splash_attention(*a, interpret=True), xla)
    )
    np.testing.assert_allclose(splash, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(splash_grads, plain_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
