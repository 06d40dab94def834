"""The paper's four scorers: HPSv2, CLIP score and LAION aesthetic on open_clip,
PickScore on transformers' CLIPModel. Weights come from local paths, or from
the hub (``hf://org/repo/file``) where it is reachable (``require_file``);
tests build tiny models of the same classes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from scorers_torch.scorers.base import Scorer, register_scorer, require_file
from scorers_torch.scorers.pixels import centre_crop, pad_to_square, rgb
from scorers_torch.threads import thread_map


def default_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class _TorchScorer(Scorer):
    """Device placement, half precision on CUDA (fp16 autocast leaves CLIP
    rankings as they are), and batching. ``pixels`` is the reference's image
    preprocessing, and the manifest records which one (``preprocessing``)."""

    preprocessing: str = ""

    def __init__(self, device: str | None, half: bool | None, batch_size: int):
        self.device = default_device(device)
        self.half = self.device.type == "cuda" if half is None else half
        self.batch_size = batch_size

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.half:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preprocessing": self.preprocessing}

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

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class _OpenClipScorer(_TorchScorer):
    """An open_clip model whose image and text features are compared by cosine."""

    def __init__(self, model_name: str, weights: Path, device: str | None, half: bool | None, batch_size: int):
        import open_clip

        super().__init__(device, half, batch_size)
        self.model = open_clip.create_model(model_name, pretrained=None, load_weights=False)
        load_open_clip_weights(self.model, weights)
        self.model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = self.model.visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        self._weights = [weights]

    def weight_files(self) -> list[Path]:
        return self._weights

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.pixels(images).to(self.device)
        return nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return (self.image_features(images) * self.text_features(prompts)).sum(-1)


class _PaddedToSquare(_OpenClipScorer):
    """HPSv2's preprocessing (``pixels.pad_to_square``), which Diffusion-DPO also
    computes CLIP score with; ``antialias`` as torchvision < 0.17 (False, the
    reference as released) or >= 0.17 (True)."""

    def __init__(
        self, model_name: str, weights: Path, antialias: bool, device: str | None, half: bool | None, batch_size: int
    ):
        super().__init__(model_name, weights, device, half, batch_size)
        self.antialias = bool(antialias)
        self.preprocessing = f"pad_to_square(antialias={self.antialias})"

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack(thread_map(lambda im: pad_to_square(im, self.image_size, self.antialias), images))


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
class HPSv2(_PaddedToSquare):
    """Human Preference Score v2: an open_clip ViT-H-14 fine-tuned on HPDv2.

    Preprocessing as HPSv2's own (``pixels.pad_to_square``); score = cosine of
    image and text features.
    """

    SOURCE = "https://huggingface.co/xswu/HPSv2 (HPS_v2_compressed.pt for v2.0, HPS_v2.1_compressed.pt for v2.1)"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model_name: str = "ViT-H-14",
        antialias: bool = False,
        device: str | None = None,
        half: bool | None = None,
        batch_size: int = 32,
    ):
        path = require_file(checkpoint, "HPSv2", self.SOURCE)
        self.version = "2.1" if "2.1" in path.name else "2.0"
        super().__init__(model_name, path, antialias, device, half, batch_size)


@register_scorer("clip")
class CLIPScore(_PaddedToSquare):
    """CLIP score as the paper uses it: raw cosine of open_clip ViT-H-14
    (laion2b_s32b_b79k) image and text features (not 100 * max(cos, 0)), the
    image preprocessed as HPSv2 does: Diffusion-DPO's ``clip_utils`` scores with
    HPSv2's ``create_model_and_transforms(..., light_augmentation=True)``."""

    SOURCE = "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (open_clip_pytorch_model.bin)"
    version = "laion2b_s32b_b79k"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        model_name: str = "ViT-H-14",
        antialias: bool = False,
        device: str | None = None,
        half: bool | None = None,
        batch_size: int = 32,
    ):
        path = require_file(weights, "CLIP score", self.SOURCE)
        super().__init__(model_name, path, antialias, device, half, batch_size)


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
    """LAION aesthetic score (~1-10): the MLP on L2-normalised CLIP ViT-L/14 image
    embeddings, the image preprocessed as the predictor's ``clip.load`` does
    (``pixels.centre_crop``)."""

    preprocessing = "centre_crop"

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
        super().__init__(model_name, clip_path, device, half, batch_size)
        self._centre_crop = centre_crop(self.image_size)
        self.head = AestheticMLP(self.model.visual.output_dim)
        self.head.load_state_dict(torch.load(head_path, map_location="cpu", weights_only=True))
        self.head.eval().to(self.device)
        self._weights = [head_path, clip_path]

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack(thread_map(self._centre_crop, images))

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.head(self.image_features(images).to(next(self.head.parameters()).dtype))


@register_scorer("pickscore")
class PickScore(_TorchScorer):
    """PickScore_v1: a transformers CLIPModel with the CLIP-ViT-H-14 processor.
    Cosine by default; ``logit_scaled`` multiplies by the model's learned scale (~100).

    The image processor is the PIL one PickScore was released with (transformers
    4's ``CLIPImageProcessor``, in transformers 5 ``CLIPImageProcessorPil``):
    transformers 5 loads the torchvision one by default, whose bicubic resize is
    not PIL's: pixels differ by up to 0.29 in CLIP-normalised units (14/255)."""

    preprocessing = "CLIPImageProcessorPil"

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
        from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor

        super().__init__(device, half, batch_size)
        model_path = require_file(model, "PickScore model", self.SOURCE)
        processor_path = require_file(processor, "PickScore processor", self.SOURCE)
        self.model = CLIPModel.from_pretrained(model_path).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(processor_path, backend="pil")
        if not isinstance(self.processor.image_processor, CLIPImageProcessorPil):  # no silent fallback
            raise TypeError(
                f"PickScore processor {processor_path} loads {type(self.processor.image_processor).__name__}, "
                "not the PIL CLIPImageProcessorPil PickScore was released with"
            )
        self.logit_scaled = logit_scaled
        self._weights = [model_path]

    def weight_files(self) -> list[Path]:
        return self._weights

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor.image_processor([rgb(im) for im in images], return_tensors="pt").pixel_values

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        tokens = self.processor.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
        ).to(self.device)
        out = self.model(**tokens, pixel_values=self.pixels(images).to(self.device))  # embeds come L2-normalised
        cosine = (out.image_embeds.float() * out.text_embeds.float()).sum(-1)
        return cosine * self.model.logit_scale.exp().float() if self.logit_scaled else cosine
