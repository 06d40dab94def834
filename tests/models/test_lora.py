"""LoRA adapters: our adapted forward against peft's on diffusers' UNet, the
same adapter weights and inputs; merged kernels against the adapted forward.

Tolerance as in test_parity.py: 1e-5 of the output scale in fp32; the
adapters' effect is checked to be far above it, so a missing or misscaled
adapter cannot pass.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bdpo_jax.models import ModelOptions, UNetConfig, abstract_unet, params_from_diffusers
from bdpo_jax.models.lora import LoRAConfigError, LoRASpec
from bdpo_jax.models.lora_weights import adapters_from_lora_state_dict, init_adapters, merge_adapters
from bdpo_jax.models.presets import unet_preset
from bench.parity import random_diffusers_unet, random_inputs, torch_forward

TOLERANCE = 1e-5


def adapted_torch_unet(name: str, spec: LoRASpec):
    """diffusers' UNet (random weights) before and after peft adds random adapters."""
    from peft import LoraConfig

    unet = random_diffusers_unet(unet_preset(name), seed=1)
    base = {k: v.numpy().copy() for k, v in unet.state_dict().items()}
    lora = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets), init_lora_weights=False)
    unet.add_adapter(lora)
    torch.manual_seed(2)
    with torch.no_grad():
        for param_name, param in unet.named_parameters():
            if "lora_" in param_name:
                param.normal_(0.0, 0.05)  # at 0.2 the net amplifies fp32 rounding to 1e-5 (torch vs its fp64 too)
    return unet, base


@functools.cache
def jitted_forward(graphdef):
    """One jitted forward per model structure: the merged kernels' forward reuses the plain one's trace."""
    return jax.jit(lambda states, inputs: nnx.merge(graphdef, *states)(**inputs))


def forward(graphdef, *states, inputs):
    return np.asarray(jitted_forward(graphdef)(states, inputs))


@pytest.mark.parametrize(
    ("name", "targets"), [("tiny-sd1", ("attention", "feed_forward", "resnet")), ("tiny-sdxl", ("attention",))]
)
def test_adapted_forward_matches_peft_and_merged_kernels(name, targets):
    from peft.utils import get_peft_model_state_dict

    spec = LoRASpec.from_names(rank=4, alpha=12.0, targets=targets)  # alpha != rank: the scale is 3
    torch_unet, base_tensors = adapted_torch_unet(name, spec)
    config = UNetConfig.from_diffusers(unet_preset(name))
    graphdef, abstract = abstract_unet(config, ModelOptions(), lora=spec)
    abstract_adapters, abstract_base = abstract.split(nnx.LoRAParam, ...)
    base = nnx.to_pure_dict(params_from_diffusers(abstract_base, base_tensors))
    peft_tensors = {k: v.detach().numpy() for k, v in get_peft_model_state_dict(torch_unet).items()}
    adapters = nnx.to_pure_dict(adapters_from_lora_state_dict(abstract_adapters, peft_tensors))
    inputs = random_inputs(config)

    theirs = torch_forward(torch_unet, inputs)
    ours = forward(graphdef, adapters, base, inputs=inputs)
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE * scale)

    plain_graphdef, _ = abstract_unet(config)
    without = forward(plain_graphdef, base, inputs=inputs)
    assert np.abs(ours - without).max() > 100 * TOLERANCE * scale  # the adapters matter
    merged = forward(plain_graphdef, merge_adapters(base, adapters, spec.scale), inputs=inputs)
    np.testing.assert_allclose(merged, ours, rtol=0, atol=TOLERANCE * scale)


def test_initial_adapters_leave_the_base_unchanged():
    config = UNetConfig.from_diffusers(unet_preset("micro-sd1"))
    spec = LoRASpec.from_names(rank=2, alpha=None, targets=("attention", "resnet"))
    graphdef, abstract = abstract_unet(config, ModelOptions(), lora=spec)
    abstract_adapters, abstract_base = abstract.split(nnx.LoRAParam, ...)
    adapters = nnx.to_pure_dict(init_adapters(abstract_adapters, seed=0))
    rng = np.random.default_rng(0)
    base = jax.tree.map(lambda v: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) * 0.1, abstract_base)
    base = nnx.to_pure_dict(base)
    inputs = random_inputs(config)
    plain_graphdef, _ = abstract_unet(config)
    np.testing.assert_array_equal(
        forward(graphdef, adapters, base, inputs=inputs), forward(plain_graphdef, base, inputs=inputs)
    )
    a_kernels = [v for p, v in nnx.to_flat_state(nnx.State(adapters)) if "lora_A" in p]
    assert a_kernels and all(np.abs(np.asarray(a)).max() > 0 for a in a_kernels)
    assert spec.scale == 1.0 and spec.targets == ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut")


def test_bad_targets_are_named():
    config = UNetConfig.from_diffusers(unet_preset("micro-sd1"))
    with pytest.raises(LoRAConfigError, match=r"'to_qq'.*name no module"):
        abstract_unet(config, lora=LoRASpec.from_names(4, None, ("to_qq", "to_k")))
    with pytest.raises(LoRAConfigError, match=r"linear and conv layers only.*attn1 \(Attention\)"):
        abstract_unet(config, lora=LoRASpec.from_names(4, None, ("attn1",)))
