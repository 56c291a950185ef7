"""Evaluation: one protocol for every family (likelihood, distribution metrics in the features of
one extractor, sampling and training cost) and the comparison report. The stage is
:func:`genpipe.evaluation.stage.evaluate_family`; nothing is imported here, so that loading the
feature network (:mod:`genpipe.evaluation.features`) does not load the whole stage."""
