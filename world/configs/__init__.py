"""The small world's config file (``world.py``): every setting of the world, once."""

from pathlib import Path


def path(name: str) -> str:
    """A config file of this folder, by absolute path: the commands' default ``--world`` from any directory."""
    return str(Path(__file__).with_name(name))
