"""The distribution metrics of one set of images against the real data, the same for every
family (and for held-out real images, the reference row of the report).

Features and class probabilities come from one extractor (:mod:`genpipe.evaluation.features`),
whose id goes into every result. The reference is the prepared train split: FID/KID,
precision/recall, density/coverage compare to its features, the class histogram to its label
distribution, memorisation to its pixels (with the test split as the held-out real images).
Its real-side statistics are computed once, by the features stage
(:mod:`genpipe.evaluation.reference`); :func:`load_reference` reads them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from genpipe.config import Config
from genpipe.data import load_split, read_card
from genpipe.evaluation import metrics as M
from genpipe.evaluation.features import Extractor, features_dir
from genpipe.evaluation.reference import Reference, pixels, read_reference, sharpness

__all__ = ["Reference", "load_reference", "reference_quality", "sample_quality", "sharpness"]


def load_reference(cfg: Config, extractor: Extractor, with_pixels: bool = True) -> Reference:
    """The reference statistics the features stage stored for today's dataset and ``extractor``
    (an :class:`InputError` saying to run `genpipe features` again when they do not match);
    ``with_pixels`` adds the train pixels that memorisation of new samples needs."""
    ref = read_reference(features_dir(cfg.paths.models), read_card(cfg.paths.data)["sha256"], extractor.id,
                         cfg.evaluate.pr_k, cfg.evaluate.dc_k, extractor.num_features)
    if not with_pixels:
        return ref
    return replace(ref, train_pixels=pixels(load_split(cfg.paths.data, "train").images))


def _scores(feats: torch.Tensor, probs: torch.Tensor | None, ref: Reference, cfg: Config, key: str) -> dict[str, Any]:
    """The feature-space metrics of ``feats`` (N, D) and ``probs`` (N, K) against ``ref``."""
    e = cfg.evaluate
    real = ref.train_features
    kid_mean, kid_std = M.kernel_inception_distance(real, feats, e.kid_subsets, e.kid_subset_size, seed=cfg.seed, key=key)
    precision, recall = M.precision_recall(real, feats, e.pr_k, real_radii=ref.pr_radii)
    density, coverage = M.density_coverage(real, feats, e.dc_k, real_radii=ref.dc_radii)
    out: dict[str, Any] = {
        "fid": M.frechet_distance(None, feats, key=key, real_stats=ref.fid),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
    }
    if probs is not None:
        is_mean, is_std = M.inception_score(probs)
        out |= {"inception_score": is_mean, "inception_score_std": is_std}
        if probs.shape[1] == len(ref.label_distribution):  # the domain classifier's classes are the data's
            hist = M.class_histogram(probs, ref.label_distribution)  # (Inception's 1008 ImageNet ones are not)
            out |= {"classes_covered": hist["classes_covered"], "class_kl": hist["kl_to_labels"],
                    "class_fractions": hist["fractions"]}
    return out


def sample_quality(images: torch.Tensor, ref: Reference, extractor: Extractor, cfg: Config,
                   key: str = "evaluate.num_samples") -> dict[str, Any]:
    """Every distribution metric of uint8 ``images`` (N, C, H, W) against ``ref``; ``key`` is
    the setting behind their count, named when it is too small."""
    if ref.train_pixels is None:
        raise ValueError("sample_quality needs the train pixels: load_reference(..., with_pixels=True)")
    feats, probs = extractor.features_and_probs(images, cfg.evaluate.batch_size)
    return {
        "extractor_id": extractor.id,
        "num_samples": len(images),
        **_scores(feats, probs, ref, cfg, key),
        "sharpness_ratio": sharpness(images) / ref.train_sharpness,
        "memorisation": M.memorisation(ref.train_pixels, pixels(images), heldout_to_train=ref.heldout_to_train),
    }


def reference_quality(ref: Reference, cfg: Config, key: str = "data.test_fraction (the test split)") -> dict[str, Any]:
    """The metrics of the held-out real images (test split) against ``ref``, from their stored
    features: what :func:`sample_quality` gives for them, with no image read or extracted."""
    held = ref.heldout_to_train
    return {
        "extractor_id": ref.extractor_id,
        "num_samples": len(ref.heldout_features),
        **_scores(ref.heldout_features, ref.heldout_probs, ref, cfg, key),
        "sharpness_ratio": ref.heldout_sharpness / ref.train_sharpness,
        "memorisation": M.memorisation_ratio(held, held, ref.train_scale),  # the held-out set is the "sample" here
    }
