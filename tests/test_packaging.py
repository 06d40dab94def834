"""The two sides install apart: the JAX install asks for no torch package
(what each side's modules import: tests/test_imports.py)."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_jax_install_names_no_torch_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["jax"]
    names = [re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in requirements]
    assert names and not [n for n in names if "torch" in n], names
