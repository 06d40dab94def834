"""Each scorer's preprocessing against its reference's, written out by hand, on
non-square RGB, RGBA and greyscale images; each scorer's formula against a
computation by hand from its model's parts."""

import hashlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from scorers_torch.scorers import Scorer, build_scorer, register_scorer, registered_scorers
from scorers_torch.testing import COLOURS, render

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
STD = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]
PIXEL_ATOL = 1e-5  # float rounding; one 8-bit level is 0.015 after CLIP's std


@pytest.fixture(scope="module")
def images_and_prompts():
    rng = np.random.default_rng(0)
    prompts = ["a red circle on a white background", "a blue square on a black background", "a green triangle"]
    prompts.append("a yellow circle on a gray background")
    rendered = [render(p, rng, 0.7, size=64) for p in prompts]
    rgba = rendered[1].resize((40, 57)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # transparent to opaque, top to bottom
    images = [
        rendered[0].resize((48, 40)),
        rgba,
        rendered[2].resize((57, 36)).convert("L"),
        rendered[3].resize((35, 157)),  # tall: a crop along the height
    ]
    return images, prompts


def normalised(image: Image.Image | np.ndarray) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
    return (pixels - MEAN) / STD


def hps_pixels(image: Image.Image, size: int, antialias: bool) -> torch.Tensor:
    """HPSv2's evaluation transform: RGB, float tensor, longer side to `size` by a
    bicubic tensor resize, black padding (pad // 2 first), CLIP mean/std."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    height, width = pixels.shape[1:]
    scale = size / float(max(height, width))
    new = (round(height * scale), round(width * scale))
    pixels = torch.nn.functional.interpolate(pixels[None], new, mode="bicubic", antialias=antialias)[0]
    canvas = torch.zeros(3, size, size)
    top, left = (size - new[0]) // 2, (size - new[1]) // 2
    canvas[:, top : top + new[0], left : left + new[1]] = pixels
    return (canvas - MEAN) / STD


def shorter_side_to(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, longer to int(longer * size / shorter), PIL bicubic."""
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return image.resize(new, Image.BICUBIC)


def openai_clip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """OpenAI CLIP's: shorter side to `size`, centre crop with a rounded offset."""
    resized = shorter_side_to(image.convert("RGB"), size)
    left, top = round((resized.width - size) / 2), round((resized.height - size) / 2)
    return normalised(resized.crop((left, top, left + size, top + size)))


def pickscore_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """transformers 4's (slow) CLIPImageProcessor, as PickScore was released:
    shorter side to `size`, centre crop with a floored offset."""
    resized = shorter_side_to(image.convert("RGB"), size)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return normalised(resized.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("name", ["hpsv2", "clip"])
def test_pad_to_square_as_hpsv2(name, antialias, tiny_weights, images_and_prompts):
    images, _ = images_and_prompts
    scorer = build_scorer(name, device="cpu", antialias=antialias, **tiny_weights[name])
    expected = torch.stack([hps_pixels(im, scorer.image_size, antialias) for im in images])
    torch.testing.assert_close(scorer.pixels(images), expected, atol=PIXEL_ATOL, rtol=0)
    assert scorer.describe()["preprocessing"] == f"pad_to_square(antialias={antialias})"


def test_aesthetic_centre_crops_as_openai_clip(tiny_weights, images_and_prompts):
    images, _ = images_and_prompts
    scorer = build_scorer("aesthetic", device="cpu", **tiny_weights["aesthetic"])
    expected = torch.stack([openai_clip_pixels(im, scorer.image_size) for im in images])
    torch.testing.assert_close(scorer.pixels(images), expected, atol=PIXEL_ATOL, rtol=0)


def test_pickscore_preprocesses_as_released(tiny_weights, images_and_prompts):
    images, _ = images_and_prompts
    scorer = build_scorer("pickscore", device="cpu", **tiny_weights["pickscore"])
    expected = torch.stack([pickscore_pixels(im, 32) for im in images])
    torch.testing.assert_close(scorer.pixels(images), expected, atol=PIXEL_ATOL, rtol=0)
    assert scorer.describe()["preprocessing"] == "CLIPImageProcessorPil"
    # What transformers 5 loads by default is not it: off by 8-bit levels.
    torchvision_processor = CLIPImageProcessor.from_pretrained(tiny_weights["pickscore"]["processor"])
    rgb = [im.convert("RGB") for im in images]
    assert (torchvision_processor(rgb, return_tensors="pt").pixel_values - expected).abs().max() > 0.01


def test_alpha_is_dropped_not_composited(tiny_weights, images_and_prompts):
    """PIL's convert("RGB"), as the references: an RGBA image scores as its RGB
    channels, not as composited onto white (transformers 5's default)."""
    rgba = images_and_prompts[0][1]
    white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    for name in ("hpsv2", "aesthetic", "pickscore"):
        scorer = build_scorer(name, device="cpu", **tiny_weights[name])
        torch.testing.assert_close(scorer.pixels([rgba]), scorer.pixels([rgba.convert("RGB")]), atol=0, rtol=0)
        assert (scorer.pixels([rgba]) - scorer.pixels([white])).abs().max() > 1.0


@pytest.mark.parametrize("name", ["hpsv2", "clip"])
def test_open_clip_scorers_by_hand(name, tiny_weights, images_and_prompts):
    images, prompts = images_and_prompts
    scorer = build_scorer(name, device="cpu", **tiny_weights[name])
    model = scorer.model
    with torch.no_grad():
        image = model.encode_image(torch.stack([hps_pixels(im, scorer.image_size, False) for im in images]))
        text = model.encode_text(open_clip.get_tokenizer(tiny_weights[name]["model_name"])(prompts))
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    expected = (image * text).sum(-1).numpy()
    np.testing.assert_allclose(scorer.score(images, prompts), expected, atol=2e-3)
    assert np.ptp(expected) > 1e-3  # the images really score differently


def test_hpsv2_and_clip_preprocess_alike(tiny_weights, images_and_prompts):
    """Diffusion-DPO's CLIP score uses HPSv2's transform: same weights, same scores."""
    images, prompts = images_and_prompts
    weights = tiny_weights["clip"]["weights"]
    hps = build_scorer("hpsv2", device="cpu", checkpoint=weights, model_name=tiny_weights["clip"]["model_name"])
    clip = build_scorer("clip", device="cpu", **tiny_weights["clip"])
    np.testing.assert_array_equal(hps.score(images, prompts), clip.score(images, prompts))


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
    model, tokenizer = scorer.model, scorer.processor.tokenizer
    with torch.no_grad():
        pixels = torch.stack([pickscore_pixels(im, 32) for im in images])
        tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=tokens).pooler_output)
    cosine = torch.nn.functional.cosine_similarity(image, text).numpy()
    expected = cosine * model.logit_scale.exp().item() if logit_scaled else cosine
    np.testing.assert_allclose(scorer.score(images, prompts), expected, rtol=1e-4, atol=1e-5)


def test_aesthetic_by_hand(tiny_weights, images_and_prompts):
    images, prompts = images_and_prompts
    scorer = build_scorer("aesthetic", device="cpu", **tiny_weights["aesthetic"])
    with torch.no_grad():
        pixels = torch.stack([openai_clip_pixels(im, scorer.image_size) for im in images])
        embedding = scorer.model.encode_image(pixels)
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
