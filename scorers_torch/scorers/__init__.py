"""Scorers by registry name: HPSv2, CLIP score, PickScore, LAION aesthetic, and
weight-free programmatic scorers for the built-in demo."""

from scorers_torch.scorers.base import Scorer, build_scorer, register_scorer, registered_scorers

__all__ = ["Scorer", "build_scorer", "register_scorer", "registered_scorers"]
