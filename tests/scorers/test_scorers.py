"""Each scorer's formula against a computation by hand from its model's parts."""

import hashlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from scorers_torch.scorers import Scorer, build_scorer, register_scorer, registered_scorers
from scorers_torch.synthetic import COLOURS, render

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
STD = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]


@pytest.fixture(scope="module")
def images_and_prompts():
    rng = np.random.default_rng(0)
    prompts = ["a red circle on a white background", "a blue square on a black background", "a green triangle"]
    # Not square, so that HPSv2's pad-to-square and CLIP's centre crop differ.
    images = [render(p, rng, 0.7, size=48).resize((48 + 16 * i, 40)) for i, p in enumerate(prompts)]
    return images, prompts


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)


def hps_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """HPSv2's ResizeMaxSize: longest side to `size` (bicubic), centred black padding."""
    scale = size / max(image.size)
    w, h = round(image.width * scale), round(image.height * scale)
    resized = image.resize((w, h), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, ((size - w) // 2, (size - h) // 2))
    return (to_tensor(canvas) - MEAN) / STD


def clip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP's: shorter side to `size` (bicubic), centre crop."""
    scale = size / min(image.size)
    w, h = round(image.width * scale), round(image.height * scale)
    resized = image.resize((w, h), Image.BICUBIC)
    left, top = round((w - size) / 2), round((h - size) / 2)
    return (to_tensor(resized.crop((left, top, left + size, top + size))) - MEAN) / STD


@pytest.mark.parametrize(("name", "pixels_fn"), [("hpsv2", hps_pixels), ("clip", clip_pixels)])
def test_open_clip_scorers_by_hand(name, pixels_fn, tiny_weights, images_and_prompts):
    images, prompts = images_and_prompts
    scorer = build_scorer(name, device="cpu", **tiny_weights[name])
    size = scorer.model.visual.image_size[0]
    model = scorer.model
    with torch.no_grad():
        image = model.encode_image(torch.stack([pixels_fn(im, size) for im in images]))
        text = model.encode_text(open_clip.get_tokenizer(tiny_weights[name]["model_name"])(prompts))
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    expected = (image * text).sum(-1).numpy()
    np.testing.assert_allclose(scorer.score(images, prompts), expected, atol=2e-3)
    assert np.ptp(expected) > 1e-3  # the images really score differently


def test_hpsv2_and_clip_preprocess_differently(tiny_weights, images_and_prompts):
    images, prompts = images_and_prompts
    weights = tiny_weights["clip"]["weights"]
    hps = build_scorer("hpsv2", device="cpu", checkpoint=weights, model_name=tiny_weights["clip"]["model_name"])
    clip = build_scorer("clip", device="cpu", **tiny_weights["clip"])
    assert not np.allclose(hps.score(images, prompts), clip.score(images, prompts))


def test_hpsv2_version_from_file_name(tiny_weights, tmp_path):
    v21 = tmp_path / "HPS_v2.1_compressed.pt"
    v21.write_bytes(Path(tiny_weights["hpsv2"]["checkpoint"]).read_bytes())
    scorer = build_scorer("hpsv2", checkpoint=v21, model_name=tiny_weights["hpsv2"]["model_name"])
    assert scorer.describe()["version"] == "2.1"
    assert scorer.describe()["weights"] == {str(v21): hashlib.sha256(v21.read_bytes()).hexdigest()}


@pytest.mark.parametrize("logit_scaled", [False, True])
def test_pickscore_by_hand(logit_scaled, tiny_weights, images_and_prompts):
    images, prompts = images_and_prompts
    scorer = build_scorer("pickscore", device="cpu", logit_scaled=logit_scaled, **tiny_weights["pickscore"])
    model, processor = scorer.model, scorer.processor
    with torch.no_grad():
        pixels = processor.image_processor(images, return_tensors="pt").pixel_values
        tokens = processor.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=tokens).pooler_output)
    cosine = torch.nn.functional.cosine_similarity(image, text).numpy()
    expected = cosine * model.logit_scale.exp().item() if logit_scaled else cosine
    np.testing.assert_allclose(scorer.score(images, prompts), expected, rtol=1e-4, atol=1e-5)


def test_aesthetic_by_hand(tiny_weights, images_and_prompts):
    images, prompts = images_and_prompts
    scorer = build_scorer("aesthetic", device="cpu", **tiny_weights["aesthetic"])
    size = scorer.model.visual.image_size[0]
    with torch.no_grad():
        embedding = scorer.model.encode_image(torch.stack([clip_pixels(im, size) for im in images]))
    x = (embedding / embedding.norm(dim=-1, keepdim=True)).numpy().astype(np.float64)
    head = torch.load(tiny_weights["aesthetic"]["head"])
    for i in (0, 2, 4, 6, 7):  # the predictor is affine layers only (dropout at inference is identity)
        x = x @ head[f"layers.{i}.weight"].numpy().T + head[f"layers.{i}.bias"].numpy()
    np.testing.assert_allclose(scorer.score(images, prompts), x[:, 0], rtol=1e-3, atol=1e-5)


def test_programmatic_scorers_by_hand():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    gray = Image.new("RGB", (8, 8), (100, 100, 100))
    np.testing.assert_allclose(build_scorer("saturation").score([red, gray], ["", ""]), [1.0, 0.0])
    luma = 0.299 * 255  # PIL's L = R*299/1000 + G*587/1000 + B*114/1000
    np.testing.assert_allclose(build_scorer("brightness").score([red, gray], ["", ""]), [luma, 100.0], atol=0.6)


def test_prompt_match_prefers_the_prompt():
    canvas = Image.new("RGB", (32, 32), (245, 245, 245))
    square = canvas.copy()
    square.paste(COLOURS["red"], (8, 8, 24, 24))
    wrong_colour = canvas.copy()
    wrong_colour.paste(COLOURS["blue"], (8, 8, 24, 24))
    scores = build_scorer("prompt_match").score(
        [square, wrong_colour, square], ["a red square on a white background"] * 2 + ["a red triangle"]
    )
    assert scores[0] == pytest.approx(10.0, abs=0.01)  # right colour, fills its box: square
    assert scores[1] < scores[0] and scores[2] < scores[0]


def test_registry_errors_and_custom_scorers(tmp_path):
    with pytest.raises(KeyError, match=r"registered: .*hpsv2"):
        build_scorer("hps")
    with pytest.raises(TypeError, match="takes no argument"):
        build_scorer("saturation", checkpoint="x")
    with pytest.raises(FileNotFoundError, match=r"no weight file given.*xswu/HPSv2"):
        build_scorer("hpsv2")
    with pytest.raises(FileNotFoundError, match=r"could not fetch hf://xswu/HPSv2/HPS_v2_compressed\.pt"):
        build_scorer("hpsv2", checkpoint="hf://xswu/HPSv2/HPS_v2_compressed.pt")  # offline in tests
    missing = tmp_path / "HPS_v2_compressed.pt"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*huggingface.co/xswu/HPSv2"):
        build_scorer("hpsv2", checkpoint=missing)

    @register_scorer("test_constant")
    class Constant(Scorer):
        def score(self, images, prompts):
            return np.full(len(images), 3.0, np.float32)

    assert "test_constant" in registered_scorers()
    assert build_scorer("test_constant").score([None, None], ["a", "b"]).tolist() == [3.0, 3.0]
    assert build_scorer("test_constant").describe() == {"name": "test_constant", "version": "1", "weights": {}}
