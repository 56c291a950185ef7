"""The distribution metrics of one set of images against the real data, the same for every
family (and for held-out real images, the reference row of the report).

Features and class probabilities come from one extractor (:mod:`genpipe.evaluation.features`),
whose id goes into every result. The reference is the prepared train split: FID/KID,
precision/recall, density/coverage compare to its features, the class histogram to its label
distribution, memorisation to its pixels (with the test split as the held-out real images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genpipe.config import Config
from genpipe.data import load_split
from genpipe.evaluation import metrics as M
from genpipe.evaluation.features import Extractor


@dataclass(frozen=True)
class Reference:
    """The real data every sample set is compared with, in the extractor's features."""

    train_features: torch.Tensor  # (N, D) float64
    train_pixels: torch.Tensor  # (N, C*H*W) float32 in [0, 1]
    test_images: torch.Tensor  # (M, C, H, W) uint8, for the real-data reference row
    label_distribution: torch.Tensor  # (K,) train label frequencies
    train_sharpness: float  # mean Laplacian energy of the train images


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).float() / 255.0


def sharpness(images: torch.Tensor) -> float:
    """Mean squared response of the 3x3 Laplacian over uint8 images (N, C, H, W) in [0, 1]
    units: blur lowers it, noise raises it. Reported relative to the real train images."""
    x = images.float() / 255.0
    c = x.shape[1]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).repeat(c, 1, 1, 1)
    return float(F.conv2d(x, kernel, groups=c).pow(2).mean())


def load_reference(cfg: Config, extractor: Extractor) -> Reference:
    train, test = load_split(cfg.paths.data, "train"), load_split(cfg.paths.data, "test")
    counts = torch.bincount(train.labels.long(), minlength=train.num_classes).double()
    return Reference(
        train_features=extractor.features(train.images, cfg.evaluate.batch_size),
        train_pixels=_pixels(train.images),
        test_images=test.images,
        label_distribution=counts / counts.sum(),
        train_sharpness=sharpness(train.images),
    )


def sample_quality(images: torch.Tensor, ref: Reference, extractor: Extractor, cfg: Config,
                   key: str = "evaluate.num_samples") -> dict[str, Any]:
    """Every distribution metric of uint8 ``images`` (N, C, H, W) against ``ref``; ``key`` is
    the setting behind their count, named when it is too small."""
    e = cfg.evaluate
    feats, probs = extractor.features_and_probs(images, e.batch_size)
    real = ref.train_features
    fid = M.frechet_distance(real, feats, key=key)
    kid_mean, kid_std = M.kernel_inception_distance(real, feats, e.kid_subsets, e.kid_subset_size, seed=cfg.seed, key=key)
    precision, recall = M.precision_recall(real, feats, e.pr_k)
    density, coverage = M.density_coverage(real, feats, e.dc_k)
    out: dict[str, Any] = {
        "extractor_id": extractor.id,
        "num_samples": len(images),
        "fid": fid,
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
        "sharpness_ratio": sharpness(images) / ref.train_sharpness,
        "memorisation": M.memorisation(ref.train_pixels, _pixels(images), _pixels(ref.test_images)),
    }
    if probs is not None:
        is_mean, is_std = M.inception_score(probs)
        out |= {"inception_score": is_mean, "inception_score_std": is_std}
        if probs.shape[1] == len(ref.label_distribution):  # the domain classifier's classes are the data's
            hist = M.class_histogram(probs, ref.label_distribution)  # (Inception's 1008 ImageNet ones are not)
            out |= {"classes_covered": hist["classes_covered"], "class_kl": hist["kl_to_labels"],
                    "class_fractions": hist["fractions"]}
    return out
