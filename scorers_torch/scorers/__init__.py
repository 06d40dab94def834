"""Scorers by registry name: HPSv2, CLIP score, PickScore, LAION aesthetic, and
the small world's weight-free scorers. The tests' weight-free scorers register
when ``scorers_torch.testing`` is imported."""

from scorers_torch.scorers.base import Scorer, build_scorer, register_scorer, registered_scorers

__all__ = ["Scorer", "build_scorer", "register_scorer", "registered_scorers"]
