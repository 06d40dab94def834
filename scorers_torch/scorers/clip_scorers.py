"""The paper's four scorers: HPSv2, CLIP score and LAION aesthetic on open_clip,
PickScore on transformers' CLIPModel. Weights come from local paths only
(download them once where a hub is reachable); tests build tiny models of the
same classes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from scorers_torch.scorers.base import Scorer, register_scorer, require_file
from scorers_torch.threads import thread_map


def default_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class _TorchScorer(Scorer):
    """Device placement, half precision on CUDA (fp16 autocast leaves CLIP
    rankings as they are), and batching."""

    def __init__(self, device: str | None, half: bool | None, batch_size: int):
        self.device = default_device(device)
        self.half = self.device.type == "cuda" if half is None else half
        self.batch_size = batch_size

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.half:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = []
        for start in range(0, len(images), self.batch_size):
            end = start + self.batch_size
            with self.autocast():
                out.append(self.score_batch(list(images[start:end]), list(prompts[start:end])).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class _OpenClipScorer(_TorchScorer):
    """An open_clip model whose image and text features are compared by cosine."""

    def __init__(
        self,
        model_name: str,
        weights: Path,
        resize_mode: str,
        device: str | None,
        half: bool | None,
        batch_size: int,
    ):
        import open_clip

        super().__init__(device, half, batch_size)
        self.model = open_clip.create_model(model_name, pretrained=None, load_weights=False)
        load_open_clip_weights(self.model, weights)
        self.model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.preprocess = open_clip.image_transform(
            self.model.visual.image_size,
            is_train=False,
            mean=open_clip.OPENAI_DATASET_MEAN,
            std=open_clip.OPENAI_DATASET_STD,
            resize_mode=resize_mode,
            fill_color=0,
        )
        self._weights = [weights]

    def weight_files(self) -> list[Path]:
        return self._weights

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack(thread_map(lambda im: self.preprocess(im.convert("RGB")), images)).to(self.device)
        return nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return (self.image_features(images) * self.text_features(prompts)).sum(-1)


def load_open_clip_weights(model: nn.Module, path: Path) -> None:
    """An open_clip state dict (``.bin``/``.pt``/``.safetensors``), bare or under
    ``state_dict`` as HPSv2's checkpoints keep it; every key must match."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the open_clip model: missing {result.missing_keys[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}. Is it the checkpoint for this architecture?"
        )


@register_scorer("hpsv2")
class HPSv2(_OpenClipScorer):
    """Human Preference Score v2: an open_clip ViT-H-14 fine-tuned on HPDv2.

    Preprocessing as HPSv2's own: longest side resized to the model's input size,
    padded to a square with black; score = cosine of image and text features.
    """

    SOURCE = "https://huggingface.co/xswu/HPSv2 (HPS_v2_compressed.pt for v2.0, HPS_v2.1_compressed.pt for v2.1)"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model_name: str = "ViT-H-14",
        device: str | None = None,
        half: bool | None = None,
        batch_size: int = 32,
    ):
        path = require_file(checkpoint, "HPSv2", self.SOURCE)
        self.version = "2.1" if "2.1" in path.name else "2.0"
        super().__init__(model_name, path, "longest", device, half, batch_size)


@register_scorer("clip")
class CLIPScore(_OpenClipScorer):
    """CLIP score as the paper uses it: raw cosine of open_clip ViT-H-14
    (laion2b_s32b_b79k) image and text features (not 100 * max(cos, 0))."""

    SOURCE = "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (open_clip_pytorch_model.bin)"
    version = "laion2b_s32b_b79k"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        model_name: str = "ViT-H-14",
        device: str | None = None,
        half: bool | None = None,
        batch_size: int = 32,
    ):
        path = require_file(weights, "CLIP score", self.SOURCE)
        super().__init__(model_name, path, "shortest", device, half, batch_size)


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head (state dict keys layers.{0,2,4,6,7})."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


@register_scorer("aesthetic")
class LaionAesthetic(_OpenClipScorer):
    """LAION aesthetic score (~1-10): the MLP on L2-normalised CLIP ViT-L/14 image embeddings."""

    SOURCE = (
        "https://github.com/christophschuhmann/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth); "
        "the CLIP ViT-L/14 (OpenAI) open_clip weights from https://huggingface.co/timm/vit_large_patch14_clip_224.openai"
    )
    version = "sac+logos+ava1-l14-linearMSE"

    def __init__(
        self,
        head: str | os.PathLike | None = None,
        clip_weights: str | os.PathLike | None = None,
        model_name: str = "ViT-L-14-quickgelu",
        device: str | None = None,
        half: bool | None = None,
        batch_size: int = 32,
    ):
        head_path = require_file(head, "LAION aesthetic head", self.SOURCE)
        clip_path = require_file(clip_weights, "LAION aesthetic CLIP ViT-L/14", self.SOURCE)
        super().__init__(model_name, clip_path, "shortest", device, half, batch_size)
        self.head = AestheticMLP(self.model.visual.output_dim)
        self.head.load_state_dict(torch.load(head_path, map_location="cpu", weights_only=True))
        self.head.eval().to(self.device)
        self._weights = [head_path, clip_path]

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.head(self.image_features(images).to(next(self.head.parameters()).dtype))


@register_scorer("pickscore")
class PickScore(_TorchScorer):
    """PickScore_v1: a transformers CLIPModel with the CLIP-ViT-H-14 processor.
    Cosine by default; ``logit_scaled`` multiplies by the model's learned scale (~100)."""

    SOURCE = (
        "https://huggingface.co/yuvalkirstain/PickScore_v1 (model) and "
        "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (processor)"
    )
    version = "v1"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        processor: str | os.PathLike | None = None,
        logit_scaled: bool = False,
        device: str | None = None,
        half: bool | None = None,
        batch_size: int = 32,
    ):
        from transformers import CLIPModel, CLIPProcessor

        super().__init__(device, half, batch_size)
        model_path = require_file(model, "PickScore model", self.SOURCE)
        processor_path = require_file(processor, "PickScore processor", self.SOURCE)
        self.model = CLIPModel.from_pretrained(model_path).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(processor_path)
        self.logit_scaled = logit_scaled
        self._weights = [model_path]

    def weight_files(self) -> list[Path]:
        return self._weights

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        inputs = self.processor(
            text=prompts,
            images=[im.convert("RGB") for im in images],
            padding="max_length",
            truncation=True,
            max_length=77,
            return_tensors="pt",
        ).to(self.device)
        out = self.model(**inputs)  # image_embeds and text_embeds come L2-normalised
        cosine = (out.image_embeds.float() * out.text_embeds.float()).sum(-1)
        return cosine * self.model.logit_scale.exp().float() if self.logit_scaled else cosine
