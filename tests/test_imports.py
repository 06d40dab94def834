"""Each framework package imports only its own framework (DESIGN.md: only the
small world joins them): every module of ``bdpo_jax`` imports with torch, the
torch side and the configs blocked, and every module of ``scorers_torch`` with
JAX blocked. One fresh interpreter per package, so nothing is imported already."""

import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED = {
    "bdpo_jax": ("torch", "torchvision", "diffusers", "transformers", "open_clip", "scorers_torch", "configs", "world"),
    "scorers_torch": ("jax", "jaxlib", "flax", "optax", "orbax"),
}
# The small world, still inside both packages: it joins the two sides by design until it moves to world/
# (the lead's move removes this list).
SMALL_WORLD = (
    "bdpo_jax.demo",
    "bdpo_jax.replicate",
    "bdpo_jax.small_world",
    "scorers_torch.scorers.world",
    "scorers_torch.world",
    "scorers_torch.world_diagnosis",
    "scorers_torch.world_pipeline",
)

IMPORT_ALL = """
import importlib, pkgutil, sys

package, blocked, skipped = sys.argv[1], set(sys.argv[2].split(",")), set(sys.argv[3].split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is blocked: {package} must not import it")
        return None


sys.meta_path.insert(0, Blocker())
failures = []


def record(name, error):
    failures.append(f"{name}: {type(error).__name__}: {error}")


try:
    root = importlib.import_module(package)
except Exception as e:
    record(package, e)
else:
    onerror = lambda name: record(name, sys.exc_info()[1])
    for module in pkgutil.walk_packages(root.__path__, package + ".", onerror=onerror):
        if module.name in skipped:
            continue
        try:
            importlib.import_module(module.name)
        except Exception as e:
            record(module.name, e)
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


@pytest.mark.parametrize("package", sorted(BLOCKED))
def test_a_package_imports_without_the_other_framework(package):
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", IMPORT_ALL, package, ",".join(BLOCKED[package]), ",".join(SMALL_WORLD)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"modules of {package} that import what they must not:\n{done.stdout}{done.stderr}"
