"""Small models in the real formats, with random weights: a diffusers pipeline
folder (VAE, text encoder(s), tokenizer(s), UNet), open_clip checkpoints, a
PickScore folder and an aesthetic head. The tests and the benches use them
where the real weights cannot be downloaded; their loaders are the ones real
weights go through.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from bdpo_jax.models.presets import unet_preset

TINY_OPEN_CLIP = "bdpo-tiny-clip"


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_clip_tokenizer(directory: str | os.PathLike):
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges (514 tokens)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tokenizer.save_pretrained(directory)
    return tokenizer


def _text_config(tokenizer, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection or hidden,
    )


def make_tiny_pipeline(
    directory: str | os.PathLike, family: str = "sd", seed: int = 0, unet_preset_name: str | None = None
) -> Path:
    """A diffusers pipeline folder: tiny VAE (factor 4, 4 latent channels), CLIP
    text encoder(s) and tokenizer(s), and a matching tiny UNet; SDXL's layout
    (two encoders, penultimate states, pooled projection) with ``family="sdxl"``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in ("sd", "sdxl"):
        raise ValueError(f"family {family!r}: 'sd' or 'sdxl'")
    torch.manual_seed(seed)
    directory = Path(directory)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    vae.save_pretrained(directory / "vae")
    tokenizer = make_clip_tokenizer(directory / "tokenizer")
    widths = [16, 32] if family == "sdxl" else [32]
    CLIPTextModel(_text_config(tokenizer, widths[0])).save_pretrained(directory / "text_encoder")
    unet_config = unet_preset(unet_preset_name or ("tiny-sdxl" if family == "sdxl" else "tiny-sd1"))
    unet_config["cross_attention_dim"] = sum(widths)
    unet_config["sample_size"] = 16
    if family == "sdxl":
        make_clip_tokenizer(directory / "tokenizer_2")
        pooled = 24
        CLIPTextModelWithProjection(_text_config(tokenizer, widths[1], projection=pooled)).save_pretrained(
            directory / "text_encoder_2"
        )
        unet_config["projection_class_embeddings_input_dim"] = 6 * unet_config["addition_time_embed_dim"] + pooled
    UNet2DConditionModel.from_config(unet_config).save_pretrained(directory / "unet")
    scheduler = {"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085}
    scheduler |= {"beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon"}
    (directory / "scheduler").mkdir(exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    index = {
        "_class_name": "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    if family == "sdxl":
        index |= {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }
    else:
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (directory / "model_index.json").write_text(json.dumps(index))
    return directory


def register_tiny_open_clip() -> str:
    """Registers (``open_clip.add_model_config``) a tiny open_clip architecture:
    ViT-H-14's structure at width 32, with open_clip's own tokenizer."""
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    directory = Path(tempfile.mkdtemp(prefix="open_clip_configs-"))
    (directory / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(directory)
    return TINY_OPEN_CLIP


def save_open_clip_weights(path: str | os.PathLike, model_name: str, wrap_state_dict: bool = False, seed: int = 0):
    """Random open_clip weights, saved as HPSv2 (``{"state_dict": ...}``) or open_clip (bare) checkpoints do."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    state = model.state_dict()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state} if wrap_state_dict else state, path)
    return model


def save_aesthetic_head(path: str | os.PathLike, embed_dim: int, seed: int = 0):
    from scorers_torch.scorers.clip_scorers import AestheticMLP

    torch.manual_seed(seed)
    head = AestheticMLP(embed_dim)
    torch.save(head.state_dict(), path)
    return head


def make_tiny_pickscore(model_dir: str | os.PathLike, processor_dir: str | os.PathLike, seed: int = 0):
    """A tiny transformers CLIPModel and a CLIPProcessor (32 px, byte-level tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = make_clip_tokenizer(Path(processor_dir) / "tokenizer")
    text = _text_config(tokenizer, 32).to_dict()
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    vision |= {"image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(model_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(processor_dir)
    return model
