"""Evaluation: held-out likelihood, sample grids (the full metric protocol comes later)."""

from genpipe.evaluation.grid import make_grid
from genpipe.evaluation.stage import evaluate_family, heldout_likelihood, load_trained

__all__ = ["evaluate_family", "heldout_likelihood", "load_trained", "make_grid"]
