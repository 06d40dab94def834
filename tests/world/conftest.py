"""The suite's world (world/configs/world.py:test): the demo's draw, made once for the world tests."""

import pytest


@pytest.fixture(scope="session")
def world_run(tmp_path_factory):
    """(workdir, the demo's outcome, every prompt that was rendered while it ran): the demo's draw, seed 0."""
    from world import scene
    from world.configs.world import get_config
    from world.demo import run_demo

    rendered = []
    render = scene.render

    def recording(attributes, rng, size=scene.SIZE):
        rendered.append(attributes.prompt)
        return render(attributes, rng, size)

    workdir = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scene, "render", recording)
        outcome = run_demo(workdir, get_config("test"))
    return workdir, outcome, rendered
