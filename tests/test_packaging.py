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


def test_the_readme_starts_with_the_demo_and_the_tests():
    """.ci/run runs the README's first bash block line by line: the demo, then the suite."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert len(block) == 2 and block[0].endswith("-m world.demo") and block[1].endswith("-m pytest -q"), block
    assert all(line.startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && ") for line in block)
