import functools

import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from flax import nnx

from bdpo_jax.models import UNetConfig, UnsupportedConfigError, abstract_unet
from bdpo_jax.models.diffusers_layout import diffusers_key, diffusers_shape
from bdpo_jax.models.presets import preset_names, unet_preset


def test_sd15_reads_heads_from_attention_head_dim():
    config = UNetConfig.from_diffusers(unet_preset("sd15"))
    assert config.num_attention_heads == (8, 8, 8, 8)
    assert config.cross_attention_dim == (768,) * 4
    assert config.time_embed_dim == 1280
    assert config.pooled_text_dim is None


def test_sdxl_per_block_settings_and_pooled_width():
    config = UNetConfig.from_diffusers(unet_preset("sdxl"))
    assert config.transformer_layers_per_block == (1, 2, 10)
    assert config.num_attention_heads == (5, 10, 20)
    assert config.pooled_text_dim == 2816 - 6 * 256 == 1280


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("class_embed_type", "timestep"),
        ("dual_cross_attention", True),
        ("resnet_time_scale_shift", "scale_shift"),
        ("time_cond_proj_dim", 256),
        ("dropout", 0.1),
        ("only_cross_attention", [True, False, False, False]),
        ("addition_embed_type", "text"),
        ("num_attention_heads", 8),
    ],
)
def test_unsupported_value_names_the_key(key, value):
    config = {**unet_preset("sd15"), key: value}
    with pytest.raises(UnsupportedConfigError, match=key):
        UNetConfig.from_diffusers(config)


def test_unknown_key_is_an_error():
    with pytest.raises(UnsupportedConfigError, match="attention_heads_typo"):
        UNetConfig.from_diffusers({**unet_preset("sd15"), "attention_heads_typo": 8})


def test_unsupported_block_type_and_class_are_errors():
    config = unet_preset("sd15")
    config["down_block_types"] = ["KDownBlock2D", *config["down_block_types"][1:]]
    with pytest.raises(UnsupportedConfigError, match="KDownBlock2D"):
        UNetConfig.from_diffusers(config)
    with pytest.raises(UnsupportedConfigError, match="UNet2DModel"):
        UNetConfig.from_diffusers({**unet_preset("sd15"), "_class_name": "UNet2DModel"})


def test_per_block_list_of_wrong_length_is_an_error():
    with pytest.raises(UnsupportedConfigError, match="attention_head_dim"):
        UNetConfig.from_diffusers({**unet_preset("sd15"), "attention_head_dim": [5, 10]})


def test_private_keys_are_ignored():
    config = {**unet_preset("sd15"), "_diffusers_version": "0.6.0", "_name_or_path": "x"}
    assert UNetConfig.from_diffusers(config).block_out_channels == (320, 640, 1280, 1280)


@functools.cache
def abstract_params(name: str) -> nnx.State:
    """A preset's parameters without weights, built once for the two tests below."""
    return abstract_unet(UNetConfig.from_diffusers(unet_preset(name)))[1]


@pytest.mark.parametrize("name", preset_names())
def test_parameter_names_and_shapes_match_diffusers(name):
    """Full-size structure without weights: diffusers on the meta device, ours abstract."""
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in TorchUNet.from_config(unet_preset(name)).state_dict().items()}
    ours = {diffusers_key(path): diffusers_shape(v.shape) for path, v in nnx.to_flat_state(abstract_params(name))}
    assert ours == theirs


def test_full_size_parameter_counts():
    counts = {name: sum(v.size for _, v in nnx.to_flat_state(abstract_params(name))) for name in ("sd15", "sdxl")}
    # The published UNet sizes: SD1.5 859.5M, SDXL base 2.567B parameters.
    assert counts == {"sd15": 859_520_964, "sdxl": 2_567_463_684}
