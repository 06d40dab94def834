"""Reading and writing diffusers UNet directories: variants, shards, pipelines, errors."""

import json

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file, save_file

from bdpo_jax.models import UNetConfig, WeightsError, abstract_unet, load_unet, read_unet
from bdpo_jax.models.presets import unet_preset
from bdpo_jax.models.weights import diffusers_state_dict, fill_state, params_from_diffusers
from bench.parity import random_diffusers_unet


@pytest.fixture(scope="module")
def torch_unet():
    return random_diffusers_unet(unet_preset("tiny-sd1"), seed=3)


def params_as_diffusers(model) -> dict[str, np.ndarray]:
    return diffusers_state_dict(nnx.state(model, nnx.Param))


def assert_same_params(model, state_dict):
    ours = params_as_diffusers(model)
    assert ours.keys() == state_dict.keys()
    for key, value in state_dict.items():
        np.testing.assert_array_equal(ours[key], value.float().numpy(), err_msg=key)


def test_fp16_variant_loads_as_fp32(torch_unet, tmp_path):
    torch_unet.half().save_pretrained(tmp_path, variant="fp16")
    torch_unet.float()
    model = load_unet(tmp_path, variant="fp16")
    assert {v.dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))} == {np.dtype("float32")}
    assert_same_params(model, load_file(tmp_path / "diffusion_pytorch_model.fp16.safetensors"))


def test_sharded_fp16_variant(torch_unet, tmp_path):
    torch_unet.half().save_pretrained(tmp_path, variant="fp16", max_shard_size="200KB")
    torch_unet.float()
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    model = load_unet(tmp_path, variant="fp16")
    assert_same_params(model, {k: v.half() for k, v in torch_unet.state_dict().items()})


def test_missing_variant_error_says_which_to_pass(torch_unet, tmp_path):
    torch_unet.half().save_pretrained(tmp_path, variant="fp16")
    torch_unet.float()
    with pytest.raises(FileNotFoundError, match="variant='fp16'"):
        load_unet(tmp_path)


def test_bf16_weights(torch_unet, tmp_path):
    torch_unet.save_pretrained(tmp_path)
    bf16 = {k: v.to(torch.bfloat16) for k, v in torch_unet.state_dict().items()}
    save_file(bf16, tmp_path / "diffusion_pytorch_model.safetensors")
    assert_same_params(load_unet(tmp_path), bf16)


def test_sharded_checkpoint(torch_unet, tmp_path):
    torch_unet.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    assert_same_params(load_unet(tmp_path), torch_unet.state_dict())


def test_pipeline_directory_uses_its_unet(torch_unet, tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    torch_unet.save_pretrained(tmp_path / "unet")
    assert_same_params(load_unet(tmp_path), torch_unet.state_dict())


def test_missing_and_unexpected_keys_are_listed(torch_unet, tmp_path):
    torch_unet.save_pretrained(tmp_path)
    state = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    del state["mid_block.attentions.0.proj_in.weight"]
    state["mid_block.attentions.0.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsError) as err:
        load_unet(tmp_path)
    message = str(err.value)
    assert "1 missing:\n    mid_block.attentions.0.proj_in.weight" in message
    assert "1 unexpected:\n    mid_block.attentions.0.extra.weight" in message
    assert str(tmp_path) in message


def test_shape_mismatch_is_listed(torch_unet, tmp_path):
    torch_unet.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["cross_attention_dim"] = 16  # weights were made for 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError) as err:
        load_unet(tmp_path)
    assert "22 shape mismatch:" in str(err.value)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight: file (32, 32), model (32, 16)" in str(
        err.value
    )


def test_unsupported_config_names_file_and_key(torch_unet, tmp_path):
    torch_unet.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["resnet_time_scale_shift"] = "scale_shift"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json.*resnet_time_scale_shift"):
        load_unet(tmp_path)


def test_not_a_unet_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"neither config\.json"):
        load_unet(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_unet(tmp_path / "nope")


def test_pickle_only_directory_says_how_to_convert(torch_unet, tmp_path):
    torch_unet.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_unet(tmp_path)


def test_params_roundtrip_through_diffusers_layout():
    """Every parameter random, norm scales and biases too (their initial ones and zeros would hide a swap);
    drawn with numpy, as building the UNet op by op takes half a minute."""
    _, abstract = abstract_unet(UNetConfig.from_diffusers(unet_preset("tiny-sdxl")))
    rng = np.random.default_rng(0)
    params = fill_state(abstract, lambda path, variable: rng.standard_normal(variable.shape))
    back = params_from_diffusers(abstract, diffusers_state_dict(params))
    for (path, a), (_, b) in zip(nnx.to_flat_state(params), nnx.to_flat_state(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))


def test_read_unet_returns_config_and_tensors(torch_unet, tmp_path):
    torch_unet.save_pretrained(tmp_path)
    config, tensors = read_unet(tmp_path)
    assert config.block_out_channels == (32, 64, 64)
    assert tensors.keys() == torch_unet.state_dict().keys()
