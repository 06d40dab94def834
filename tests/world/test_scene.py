"""The small world's renderer, measurement and scorers: deterministic, the
formulas as documented, and the conflicts built into them."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from scorers_torch.scorers import build_scorer
from world import scene as world

SCORERS = ("fidelity", "composition", "contrast", "vividness")


def scores(image: Image.Image, prompt: str) -> dict[str, float]:
    return {name: float(build_scorer(name).score([image], [prompt])[0]) for name in (*SCORERS, "world_human")}


def square(colour, centre=(16, 16), half=5, background=(238, 238, 238)) -> Image.Image:
    image = Image.new("RGB", (32, 32), background)
    ImageDraw.Draw(image).rectangle(
        (centre[0] - half, centre[1] - half, centre[0] + half - 1, centre[1] + half - 1), colour
    )
    return image


def test_grammar_and_split_are_fixed():
    prompts = [a.prompt for a in world.all_attributes()]
    assert len(prompts) == len(set(prompts)) == 6 * 3 * 5 * 3
    assert all(world.parse_prompt(p).prompt == p for p in prompts)
    split = world.split_prompts()
    sizes = {part: len(found) for part, found in split.items()}
    assert sizes == {"train": 270 - 100, "validation": world.VALIDATION_PROMPTS, "test": world.TEST_PROMPTS}
    assert sorted(p for found in split.values() for p in found) == sorted(prompts)  # three disjoint parts
    assert world.split_prompts() == split


def test_render_is_deterministic_and_follows_the_prompt():
    attributes = world.parse_prompt("a blue square on the left on a black background")
    a = world.render(attributes, np.random.default_rng(3))
    b = world.render(attributes, np.random.default_rng(3))
    assert a.size == (world.SIZE, world.SIZE) and a.tobytes() == b.tobytes()
    reading = world.measure(a)
    assert world.colour_distance(reading.background, world.BACKGROUNDS["black"]) < 0.02
    assert reading.centre[0] < 0.4 and abs(reading.centre[1] - 0.5) < 0.1  # on the left
    assert world.colour_distance(reading.object_colour, world.COLOURS["blue"]) < 0.15
    assert reading.fill > 0.85 and reading.clutter == 0.0


def test_scorer_formulas_on_a_drawn_square():
    pure_red = (255, 0, 0)
    s = scores(square(pure_red), "a red square in the middle on a white background")
    assert s["vividness"] == pytest.approx(100.0)
    assert s["contrast"] == pytest.approx(np.linalg.norm(np.subtract(pure_red, 238)), rel=1e-5)
    # composition: centred (4 of 4), area 100/1024 near the roomy 7% (3 * (1 - 0.0277/0.1)), clean (3)
    assert s["composition"] == pytest.approx(4 + 3 * (1 - abs(100 / 1024 - 0.07) / 0.1) + 3, abs=0.05)
    assert 0.9 < s["fidelity"] <= 1.0
    assert scores(Image.new("RGB", (32, 32), (238, 238, 238)), "a red square in the middle on a white background") == {
        "fidelity": 0.0, "composition": 0.0, "contrast": 0.0, "vividness": 0.0, "world_human": 0.0
    }  # fmt: skip


def test_scales_differ_as_the_papers_metrics_do():
    rng = np.random.default_rng(0)
    prompts = [a.prompt for a in world.all_attributes()][::7]
    images = [world.render(world.parse_prompt(p), rng) for p in prompts]
    means = {name: float(build_scorer(name).score(images, prompts).mean()) for name in SCORERS}
    assert 0 < means["fidelity"] <= 1 and 100 < means["contrast"] < 441
    assert 1 < means["composition"] <= 10 and 10 < means["vividness"] <= 100


@pytest.mark.parametrize(
    ("prompt", "change", "up", "down"),
    [
        # toward the centre: a better composition, a worse place for "on the left"
        ("a red square on the left on a white background", dict(centre=(16, 16)), "composition", "fidelity"),
        # darker red on white: more contrast, further from the prompt's red
        ("a red square in the middle on a white background", dict(colour=(120, 20, 20)), "contrast", "fidelity"),
        # pure saturated orange: more vivid, further from the prompt's orange
        ("an orange square in the middle on a gray background", dict(colour=(255, 100, 0)), "vividness", "fidelity"),
        # a lighter green on black: more contrast, less vivid
        ("a green square in the middle on a black background", dict(colour=(150, 230, 160)), "contrast", "vividness"),
    ],
)
def test_each_trade_off_has_a_scorer_on_either_side(prompt, change, up, down):
    attributes = world.parse_prompt(prompt)
    background = world.BACKGROUNDS[attributes.background]
    where = {"left": (9, 16), "middle": (16, 16)}[attributes.position]
    before = scores(square(world.COLOURS[attributes.colour], where, background=background), prompt)
    after = scores(
        square(**({"colour": world.COLOURS[attributes.colour], "centre": where} | change), background=background),
        prompt,
    )
    assert after[up] > before[up] and after[down] < before[down]


def test_size_preferences_on_pairs_of_a_small_and_a_large_object(tmp_path):
    """Two pairs (either order) where the larger square is a darker red: contrast and vividness prefer
    it, composition (roomy), fidelity (colour) and the human (colour, size near 16%) the smaller, and
    the vote ties 2-2 (dropped). A third where the smaller is a pale red: all but composition prefer the
    larger, and so does the vote, 3 to 1."""
    from scorers_torch.pickapic import write_pairs
    from world.diagnosis import size_preferences

    prompt = "a red square in the middle on a white background"
    small, large = square((215, 40, 40), half=5), square((150, 20, 20), half=8)
    pale_small, red_large = square((200, 120, 120), half=5), square((215, 40, 40), half=8)
    pairs = write_pairs(
        tmp_path / "pairs.parquet", [prompt] * 3, [small, large, pale_small], [large, small, red_large], np.ones(3)
    )
    shares = size_preferences(pairs)
    assert shares == pytest.approx({
        "composition": 0.0, "contrast": 1.0, "fidelity": 1 / 3, "vividness": 1.0, "world_human": 1 / 3, "vote": 1.0
    })  # fmt: skip


def test_sample_spread_by_hand(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from world.diagnosis import sample_spread

    rows = []
    for model, half, values in (("base", 4, [1.0, 3.0, 2.0, 2.0]), ("tuned", 8, [2.0, 2.0, 5.0, 5.0])):
        (tmp_path / model).mkdir()
        for i, value in enumerate(values):
            square((215, 40, 40), half=half).save(tmp_path / model / f"{i}.png")
            row = {"model": model, "prompt_set": "world", "prompt_index": i // 2, "image": f"{model}/{i}.png"}
            rows.append(row | {"composition": value})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "scores.parquet")
    found = sample_spread(tmp_path)
    assert found["base"] == pytest.approx({"composition": 2.0, "composition sd": 0.5, "object area": 64 / 1024})
    assert found["tuned"] == pytest.approx({"composition": 3.5, "composition sd": 0.0, "object area": 256 / 1024})
