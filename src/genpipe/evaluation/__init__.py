"""Evaluation: one protocol for every family (likelihood, distribution metrics in the features of
one extractor, sampling and training cost) and the comparison report."""

from genpipe.evaluation.grid import make_grid
from genpipe.evaluation.stage import evaluate_family, heldout_likelihood, load_trained

__all__ = ["evaluate_family", "heldout_likelihood", "load_trained", "make_grid"]
