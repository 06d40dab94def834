"""Options that change how the UNet runs, not what it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bdpo_jax.models import ModelOptions, UNet2DConditionModel, UNetConfig, random_unet
from bdpo_jax.models.presets import unet_preset
from bench.parity import jax_forward, random_inputs

# The smallest UNet with every kind of part (SDXL's added embedding, attention
# and plain blocks, resamplers): compiling its backward pass is what costs here.
MICRO = {
    **unet_preset("tiny-sdxl"),
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1],
    "attention_head_dim": [2, 4],
    "norm_num_groups": 4,
}


def build(config: dict = MICRO, opts: ModelOptions = ModelOptions(), std: float = 1.0) -> UNet2DConditionModel:
    return random_unet(UNetConfig.from_diffusers(config), opts, seed=0, std=std)


def loss_and_grads(model: UNet2DConditionModel, inputs: dict) -> tuple[jax.Array, nnx.State]:
    graphdef, params = nnx.split(model)

    @jax.jit
    def loss_fn(params):
        return jnp.mean(nnx.merge(graphdef, params)(**inputs) ** 2)

    return jax.value_and_grad(loss_fn)(params)


@pytest.fixture(scope="module")
def no_remat():
    inputs = random_inputs(build().config, size=8)
    return inputs, *loss_and_grads(build(), inputs)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_policies_leave_gradients_unchanged(policy, no_remat):
    inputs, loss, grads = no_remat
    loss_remat, grads_remat = loss_and_grads(build(opts=ModelOptions(remat=policy)), inputs)
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_remat_appears_in_the_backward_pass():
    inputs = random_inputs(build().config, size=8)

    def jaxpr_text(opts):
        graphdef, params = nnx.split(build(opts=opts))
        return str(jax.make_jaxpr(jax.grad(lambda p: nnx.merge(graphdef, p)(**inputs).sum()))(params))

    assert "remat" not in jaxpr_text(ModelOptions())
    assert "remat" in jaxpr_text(ModelOptions(remat="full"))


def test_bf16_compute_keeps_fp32_params_and_stays_close():
    config = unet_preset("tiny-sd2")
    inputs = random_inputs(build(config).config, size=8)
    fp32, bf16 = build(config), build(config, ModelOptions(dtype=jnp.bfloat16))
    assert {v.dtype for _, v in nnx.to_flat_state(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    ref, out = jax_forward(fp32, inputs), jax_forward(bf16, inputs)
    assert out.dtype == np.float32
    relative = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert 0 < relative < 0.05, relative


def test_options_refuse_unknown_names():
    with pytest.raises(ValueError, match="flash"):
        ModelOptions(attention="flash")
    with pytest.raises(ValueError, match="everything"):
        ModelOptions(remat="everything")
    with pytest.raises(ValueError, match="rocm"):
        ModelOptions(platform="rocm")


def test_latent_size_must_fit_the_downsamplings():
    model = build(unet_preset("tiny-sd1"))
    with pytest.raises(ValueError, match="multiple of 4"):
        model(**random_inputs(model.config, size=10))


def test_sdxl_needs_pooled_text_and_time_ids():
    model = build()
    inputs = random_inputs(model.config, size=8)
    del inputs["time_ids"]
    with pytest.raises(ValueError, match="text_embeds and time_ids"):
        model(**inputs)


def test_random_unet_is_seeded_and_not_degenerate():
    config = UNetConfig.from_diffusers(MICRO)
    a, b, c = random_unet(config, seed=0), random_unet(config, seed=0), random_unet(config, seed=1)
    leaves = [jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b, c)]
    assert all(np.array_equal(x, y) for x, y in zip(leaves[0], leaves[1], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves[0], leaves[2], strict=True))
    out = jax_forward(a, random_inputs(config, size=8))
    assert float(out.std()) > 0.01
