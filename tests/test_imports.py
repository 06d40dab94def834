"""Each framework package imports only its own framework (DESIGN.md: only the
small world joins them): every module of ``bdpo_jax`` imports with torch, the
torch side and the configs blocked, every module of ``scorers_torch`` with JAX
blocked, and the modules both sides import with neither. One fresh interpreter
per case, so that nothing is imported already."""

import subprocess
import sys
from pathlib import Path

import pytest

JAX = ("jax", "jaxlib", "flax", "optax", "orbax")
TORCH = ("torch", "torchvision", "diffusers", "transformers", "open_clip")
# (modules to import, "PACKAGE.*" for all of a package's; what they must not import)
CASES = {
    "bdpo_jax": (("bdpo_jax", "bdpo_jax.*"), (*TORCH, "scorers_torch", "configs", "world")),
    "scorers_torch": (("scorers_torch", "scorers_torch.*"), JAX),
    "shared": (
        (
            "bdpo_jax.cache",
            "bdpo_jax.errors",
            "bdpo_jax.records",
            "bdpo_jax.storage.*",
            "bdpo_jax.models.diffusers_layout",
            "bdpo_jax.models.presets",
            "bdpo_jax.models.unet_files",
        ),
        (*JAX, *TORCH),
    ),
}
IMPORT = """
import importlib, pkgutil, sys

blocked, targets = set(sys.argv[1].split(",")), sys.argv[2:]


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is blocked here")
        return None


sys.meta_path.insert(0, Blocker())
failures = []


def record(name, error):
    failures.append(f"{name}: {type(error).__name__}: {error}")


def modules(target):
    if not target.endswith(".*"):
        return [target]
    root = importlib.import_module(target[:-2])
    onerror = lambda name: record(name, sys.exc_info()[1])
    return [m.name for m in pkgutil.walk_packages(root.__path__, root.__name__ + ".", onerror=onerror)]


for target in targets:
    try:
        names = modules(target)
    except Exception as e:
        record(target, e)
        continue
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:
            record(name, e)
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_modules_import_without_the_other_framework(case):
    targets, blocked = CASES[case]
    command = [sys.executable, "-c", IMPORT, ",".join(blocked), *targets]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{case}: modules that import what they must not:\n{done.stdout}{done.stderr}"
