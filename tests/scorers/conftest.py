"""Tiny scorer weights and a tiny SD pipeline, built once per session in the real formats."""

import pytest

from scorers_torch.tiny_models import (
    make_tiny_pickscore,
    make_tiny_pipeline,
    register_tiny_open_clip,
    save_aesthetic_head,
    save_open_clip_weights,
)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    model_name = register_tiny_open_clip()
    save_open_clip_weights(root / "HPS_v2_compressed.pt", model_name, wrap_state_dict=True, seed=1)
    save_open_clip_weights(root / "open_clip_pytorch_model.bin", model_name, seed=2)
    make_tiny_pickscore(root / "PickScore_v1", root / "pickscore_processor", seed=3)
    save_aesthetic_head(root / "aesthetic_head.pth", embed_dim=16, seed=4)
    return {
        "hpsv2": {"checkpoint": str(root / "HPS_v2_compressed.pt"), "model_name": model_name},
        "clip": {"weights": str(root / "open_clip_pytorch_model.bin"), "model_name": model_name},
        "pickscore": {"model": str(root / "PickScore_v1"), "processor": str(root / "pickscore_processor")},
        "aesthetic": {
            "head": str(root / "aesthetic_head.pth"),
            "clip_weights": str(root / "open_clip_pytorch_model.bin"),
            "model_name": model_name,
        },
    }


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipeline", "sd")
