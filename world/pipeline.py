"""The small world's SD-style pipeline, in diffusers' format: a word-level CLIP
tokenizer over the world's vocabulary, a CLIP text encoder with random weights
(frozen, as SD's is), a tiny VAE trained here on rendered images and then
frozen (Diffusion-DPO never trains the VAE), a UNet with random weights
(``bdpo_jax`` pretrains it), and a DPM-Solver scheduler for sampling.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scorers_torch.threads import torch_threads
from world import scene

TEXT_LENGTH = 16  # tokens, start and end included; the longest prompt has 12
TEXT_WIDTH = 32
# The random text encoder's token embeddings: CLIP's initialisation (std 0.02,
# as large as the position embeddings') leaves every prompt's states nearly the
# same (red -> blue moved the colour word's state by 0.14 std, the whole prompt's
# by ~0.1), and a UNet pretrained on them ignored its prompts. At std 1 a
# changed word moves its state by ~1 std: a frozen encoder whose states say
# what the prompt says, as a trained CLIP's do.
TOKEN_EMBEDDING_STD = 1.0
LATENT_CHANNELS = 4
VAE_CHANNELS = (32, 32, 32)  # three levels: 32 px images, 8 x 8 latents
END_OF_WORD = "</w>"


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that make each word one token, learnt as BPE learns them (the most
    frequent adjacent pair first) with ties broken by the pair itself, so that the
    merges, and so the token ids, are the same in every process. (The ``tokenizers``
    trainer breaks ties by ids it gives characters in hash order: two runs gave 13
    words other ids, and so another base.)"""
    pieces = {w: (*w[:-1], w[-1] + END_OF_WORD) for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while any(len(p) > 1 for p in pieces.values()):
        counts: dict[tuple[str, str], int] = {}
        for p in pieces.values():
            for pair in itertools.pairwise(p):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        pieces = {w: _merge(p, best) for w, p in pieces.items()}
    return merges


def _merge(pieces: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(pieces):
        if pieces[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return tuple(out)


def make_world_tokenizer(directory: str | os.PathLike):
    """A CLIP BPE tokenizer whose merges make every word of the world one token;
    every byte stays a token (and a word end), so any other text still encodes."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = word_merges(scene.vocabulary())
    tokens = alphabet + [c + END_OF_WORD for c in alphabet] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_LENGTH)
    tokenizer.save_pretrained(directory)
    tokenizer = CLIPTokenizer.from_pretrained(directory)
    for word in scene.vocabulary():
        if len(tokenizer(word, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"the world tokenizer splits {word!r}")
    return tokenizer


def make_text_encoder(tokenizer, seed: int):
    """CLIP's text encoder at the world's width, random and frozen (see ``TOKEN_EMBEDDING_STD``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_WIDTH,
    )
    encoder = CLIPTextModel(config)
    torch.nn.init.normal_(encoder.get_input_embeddings().weight, std=TOKEN_EMBEDDING_STD)
    return encoder


def rendered_batch(prompts: list[str], rng: np.random.Generator, size: int) -> torch.Tensor:
    """``size`` renders of prompts drawn from ``prompts``, as NCHW in [-1, 1]."""
    chosen = rng.integers(len(prompts), size=size)
    images = [np.asarray(scene.render(scene.parse_prompt(prompts[i]), rng)) for i in chosen]
    return torch.from_numpy(np.stack(images).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_world_vae(prompts: list[str], steps: int, batch_size: int = 16, seed: int = 0, log=print):
    """A TAESD-style ``AutoencoderTiny`` fit to rendered images (L1 + L2 of the
    reconstruction from slightly noised latents, so that the decoder tolerates
    the UNet's imperfect ones); its scaling factor gives latents unit variance.
    On one torch thread: its backward's sums change with the thread count (30
    steps on 1 and on 2 threads differed by 8e-7), and the base should not
    depend on how many cores a machine has.

    Why not an AutoencoderKL: at this size its GroupNorms (per-image statistics)
    lose absolute colour; measured on 2 CPU cores, 800 steps: AutoencoderKL
    (16, 32, 32) 22.3 dB, this one 27.6 dB with colours right."""
    with torch_threads(1):
        return _train_world_vae(prompts, steps, batch_size, seed, log)


def _train_world_vae(
    prompts: list[str], steps: int, batch_size: int, seed: int, log: Callable[[str], None]
) -> torch.nn.Module:
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    blocks = (1,) * len(VAE_CHANNELS)
    vae = AutoencoderTiny(
        encoder_block_out_channels=VAE_CHANNELS,
        decoder_block_out_channels=VAE_CHANNELS,
        num_encoder_blocks=blocks,
        num_decoder_blocks=blocks,
        latent_channels=LATENT_CHANNELS,
    )
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(steps):
        images = rendered_batch(prompts, rng, batch_size)
        latents = vae.encode(images).latents
        error = vae.decode(latents + 0.05 * torch.randn_like(latents)).sample - images
        loss = error.abs().mean() + error.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % max(steps // 4, 1) == 0:
            log(f"    vae step {step + 1}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f}s)")
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(rendered_batch(prompts, rng, 256)).latents
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


@torch.no_grad()
def reconstruction_psnr(vae, prompts: list[str], num_images: int = 256, seed: int = 1) -> float:
    """PSNR (dB) of decode(encode(x)) over fresh renders of ``prompts``, 8-bit scale."""
    images = rendered_batch(prompts, np.random.default_rng(seed), num_images)
    decoded = vae.decode(vae.encode(images).latents).sample.clamp(-1, 1)
    mse = ((decoded - images) * 127.5).square().mean().item()
    return float(10 * np.log10(255**2 / mse))


def make_world_pipeline(
    directory: str | os.PathLike, unet_config: dict, prompts: list[str], vae_steps: int, seed: int, log=print
) -> Path:
    """A diffusers StableDiffusionPipeline folder for the world, UNet random: its
    VAE fit to renders of ``prompts`` (the training prompts), every weight drawn from ``seed``."""
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

    directory = Path(directory)
    tokenizer = make_world_tokenizer(directory / "tokenizer")
    make_text_encoder(tokenizer, seed).save_pretrained(directory / "text_encoder")
    vae = train_world_vae(prompts, vae_steps, seed=seed, log=log)
    vae.save_pretrained(directory / "vae")
    unet_config = dict(unet_config, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS)
    unet_config |= {"cross_attention_dim": TEXT_WIDTH, "sample_size": scene.SIZE // 2 ** (len(VAE_CHANNELS) - 1)}
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(unet_config).save_pretrained(directory / "unet")
    scheduler = DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000
    )
    scheduler.save_pretrained(directory / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderTiny"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (directory / "model_index.json").write_text(json.dumps(index))
    return directory
