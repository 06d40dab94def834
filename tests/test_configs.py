"""Config files against their base config (``configs/*/common.py``): every shipped
config, in every variant its ``get_config`` accepts, has only the base's keys
(inside the maps users fill, anything); a misspelt key in a config file is an
error naming it. The small world's stage configs (world/configs/) against the same bases."""

import importlib
import inspect
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOT_CONFIG_FILES = {"__init__.py", "common.py", "lock.py"}
# The small world's config files for the stages' commands, and the stage whose base config they fill.
WORLD_CONFIGS = {"world.configs.train": "train", "world.configs.preprocess": "preprocess",
                 "world.configs.evaluate": "evaluate"}  # fmt: skip


def base_module(module: str) -> str:
    if module in WORLD_CONFIGS:
        return f"configs.{WORLD_CONFIGS[module]}.common"
    return f"{module.rsplit('.', 1)[0]}.common"


def shipped_configs() -> list[tuple[str, str | None]]:
    """(module, variant) for every config file and every variant it declares."""
    found = []
    files = [p for p in sorted(CONFIGS.glob("*/*.py")) if p.name not in NOT_CONFIG_FILES]
    paths = [f"configs.{p.parent.name}.{p.stem}" for p in files]
    for name in [*paths, *WORLD_CONFIGS]:
        module = importlib.import_module(name)
        takes_variant = bool(inspect.signature(module.get_config).parameters)
        assert takes_variant == hasattr(module, "VARIANTS"), f"{name}: a get_config(variant) lists its VARIANTS"
        found += [(module.__name__, v) for v in getattr(module, "VARIANTS", (None,))]
    return found


def keys(config: ml_collections.ConfigDict, open_maps: tuple[str, ...], prefix: str = "") -> set[str]:
    """Dotted keys, not inside the open maps."""
    out = set()
    for key, value in config.items():
        path = prefix + key
        if isinstance(value, ml_collections.ConfigDict) and path not in open_maps:
            out |= keys(value, open_maps, f"{path}.")
        else:
            out.add(path)
    return out


@pytest.mark.parametrize("module, variant", shipped_configs())
def test_a_shipped_config_has_only_its_base_keys(module, variant):
    config_module = importlib.import_module(module)
    common = importlib.import_module(base_module(module))
    config = config_module.get_config() if variant is None else config_module.get_config(variant)
    open_maps = getattr(common, "OPEN_MAPS", ())
    assert keys(config, open_maps) <= keys(common.base_config(), open_maps)


@pytest.mark.parametrize(
    "stage, line, key",
    [
        ("train", "config.train.stpes = 10", "stpes"),
        ("preprocess", "config.shard_sise = 64", "shard_sise"),
        ("evaluate", "config.prompts.set = prompt_set('inline', promts=('a cat',))", "promts"),
    ],
)
def test_a_misspelt_key_in_a_config_file_is_an_error_naming_it(tmp_path, stage, line, key):
    path = tmp_path / "misspelt.py"
    path.write_text(
        f"from configs.{stage}.common import *\n\n\ndef get_config():\n    config = base_config()\n    {line}\n"
        "    return config\n"
    )
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True)
    with pytest.raises((AttributeError, KeyError), match=rf'Key "{key}" does not exist'):
        flag_values(["command", f"--config={path}"])  # loaded as the commands load it
