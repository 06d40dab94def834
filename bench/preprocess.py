"""Preprocessing throughput in pairs/s: the four paper scorers at their real
architectures (open_clip ViT-H-14 for HPSv2 and CLIP, a ViT-H-14 transformers
CLIPModel for PickScore, ViT-L/14 + MLP for the aesthetic) with random weights,
and the SD1.5 VAE and text encoder at 512 px, over synthetic 512 px JPEG pairs.

    python -m bench.preprocess --out bench_preprocess.json              # full size, on a GPU
    python -m bench.preprocess --tiny --pairs 32 --batch_size 8         # smoke run on a CPU

Times whole shards (decode, score, vote, encode, write) after one warm-up shard.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np
import torch

from bdpo_jax import cache as cache_format
from bench import report
from configs.preprocess.common import base_config
from scorers_torch import preprocess
from scorers_torch.encoders import BaseModelEncoders
from scorers_torch.pickapic import PreferenceSource
from scorers_torch.scorers import build_scorer
from scorers_torch.testing import make_preference_parquet
from scorers_torch.tiny_models import (
    make_clip_tokenizer,
    make_tiny_pickscore,
    make_tiny_pipeline,
    register_tiny_open_clip,
    save_aesthetic_head,
    save_open_clip_weights,
)

SD15_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
CLIP_VIT_H = {
    "text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
    "vision_config": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
    },
    "projection_dim": 1024,
}


def full_size_models(root: Path) -> tuple[Path, dict]:
    """Random-weight files in the real formats and sizes (fp16 on disk)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel

    pipeline = root / "sd15"
    AutoencoderKL(**SD15_VAE).half().save_pretrained(pipeline / "vae")
    tokenizer = make_clip_tokenizer(pipeline / "tokenizer")
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12)
    text.eos_token_id, text.bos_token_id, text.pad_token_id = (
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
    )
    CLIPTextModel(text).half().save_pretrained(pipeline / "text_encoder")

    for name, file in (("ViT-H-14", "hps.pt"), ("ViT-H-14", "clip.bin"), ("ViT-L-14-quickgelu", "vitl.bin")):
        save_open_clip_weights(root / file, name, wrap_state_dict=file == "hps.pt")
    save_aesthetic_head(root / "aesthetic.pth", 768)
    pick_tokenizer = make_clip_tokenizer(root / "pick_processor" / "tokenizer")
    config = CLIPConfig(
        text_config={**CLIP_VIT_H["text_config"], "vocab_size": len(pick_tokenizer)},
        vision_config=CLIP_VIT_H["vision_config"],
        projection_dim=CLIP_VIT_H["projection_dim"],
    )
    CLIPModel(config).half().save_pretrained(root / "pickscore")
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=pick_tokenizer).save_pretrained(
        root / "pick_processor"
    )
    scorers = {
        "hpsv2": {"checkpoint": str(root / "hps.pt")},
        "clip": {"weights": str(root / "clip.bin")},
        "pickscore": {"model": str(root / "pickscore"), "processor": str(root / "pick_processor")},
        "aesthetic": {"head": str(root / "aesthetic.pth"), "clip_weights": str(root / "vitl.bin")},
    }
    return pipeline, scorers


def tiny_models(root: Path) -> tuple[Path, dict]:
    name = register_tiny_open_clip()
    save_open_clip_weights(root / "hps.pt", name, wrap_state_dict=True)
    save_open_clip_weights(root / "clip.bin", name)
    make_tiny_pickscore(root / "pickscore", root / "pick_processor")
    save_aesthetic_head(root / "aesthetic.pth", 16)
    scorers = {
        "hpsv2": {"checkpoint": str(root / "hps.pt"), "model_name": name},
        "clip": {"weights": str(root / "clip.bin"), "model_name": name},
        "pickscore": {"model": str(root / "pickscore"), "processor": str(root / "pick_processor")},
        "aesthetic": {"head": str(root / "aesthetic.pth"), "clip_weights": str(root / "clip.bin"), "model_name": name},
    }
    return make_tiny_pipeline(root / "pipeline"), scorers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2048, help="timed pairs (one more shard warms up)")
    parser.add_argument("--shard_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pipeline, scorer_args = tiny_models(root) if args.tiny else full_size_models(root)
        total = args.pairs + args.shard_size
        unique = min(total, 256)  # rows repeat, but every row is decoded and scored
        make_preference_parquet(root / "pairs.parquet", unique, size=args.image_size)
        source = PreferenceSource(root / "pairs.parquet")

        config = base_config()
        config.scorers = ml_collections.ConfigDict(scorer_args)
        config.batch_size = args.batch_size
        encoders = BaseModelEncoders(pipeline, resolution=64 if args.tiny else 512)
        scorers = [build_scorer(name, **kwargs) for name, kwargs in config.scorers.items()]
        rows = source.pairs(0, unique)

        def shard(index: int) -> int:
            pairs = [rows[(index * args.shard_size + i) % unique] for i in range(args.shard_size)]
            arrays, extra = preprocess.process_shard(pairs, config, encoders, scorers)
            cache_format.write_arrays(cache_format.shard_dir(root / "cache", index), arrays, extra)
            return len(pairs)

        shard(0)  # warm-up: cuDNN autotuning, allocator
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start, done, index = time.perf_counter(), 0, 1
        while done < args.pairs:
            done += shard(index)
            index += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        scores = cache_format.load_shard(root / "cache", 1)["scores"]
        finite = bool(np.isfinite(scores).all())

    result = {
        "pairs": done,
        "seconds": seconds,
        "pairs_per_s": done / seconds,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "models": "tiny" if args.tiny else "full size (random weights)",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "scores_finite": finite,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
