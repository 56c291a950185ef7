"""The real data's reference statistics for one (dataset, extractor) pair, computed once.

Every evaluation and the report compare with the same real data, so what they would otherwise
recompute each time is computed by the features stage (``genpipe features``), with the
extractor evaluation loads, right after the feature network is trained:

- the train split's features (N, D), their Gaussian as FID takes it (centre, mean, covariance),
  the k-NN radii of precision/recall (``evaluate.pr_k``) and density/coverage (``evaluate.dc_k``),
  the label distribution and the mean sharpness of the train images;
- the test split (the held-out real images, the report's real-data row): its features, class
  probabilities and sharpness, and each image's pixel distance to its nearest train image
  (memorisation's held-out side), with the train set's scale that sets that ratio's tolerance.

They are written beside the feature network, in ``<paths.models>/features/`` (one DVC output)::

    reference.pt    the tensors: torch.save of a dict of tensors, read with weights_only=True
    reference.json  what they belong to: dataset sha256, extractor id, splits, k values, the
                    extraction batch size, shapes, and the sha256 of reference.pt

Each is computed by the very function the metric would call (:mod:`genpipe.evaluation.metrics`),
so a metric fed the stored values gives the number it would give recomputing them.
:func:`read_reference` checks that the files belong to today's dataset, extractor and k; a
missing, changed or foreign file is one :class:`InputError` line naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from genpipe.data import ImageSplit
from genpipe.errors import InputError
from genpipe.evaluation import metrics as M

TENSORS = "reference.pt"
CARD = "reference.json"
SPLITS = {"reference": "train", "heldout": "test"}
AGAIN = "run `genpipe features` again"


class FeatureSource(Protocol):
    """What the reference needs of a feature extractor (:class:`~genpipe.evaluation.features.Extractor`)."""

    id: str

    def features_and_probs(self, images: torch.Tensor, batch_size: int = 256, probs: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass(frozen=True)
class Reference:
    """The real data every sample set is compared with, in one extractor's features."""

    dataset_sha256: str
    extractor_id: str
    pr_k: int
    dc_k: int
    train_features: torch.Tensor  # (N, D) float64
    fid: M.FeatureGaussian  # of train_features
    pr_radii: torch.Tensor  # (N,) k-NN radii at pr_k
    dc_radii: torch.Tensor  # (N,) k-NN radii at dc_k
    label_distribution: torch.Tensor  # (K,) train label frequencies
    train_sharpness: float  # mean Laplacian energy of the train images
    train_scale: float  # M.train_scale of the train pixels
    heldout_features: torch.Tensor  # (M, D) test split
    heldout_probs: torch.Tensor | None  # (M, K), None without a classifier head
    heldout_sharpness: float
    heldout_to_train: torch.Tensor  # (M,) pixel distance of each test image to its nearest train image
    train_pixels: torch.Tensor | None = None  # (N, C*H*W) float32 in [0, 1]: read from the data, not stored


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) as float32 rows (N, C*H*W) in [0, 1]: memorisation's space."""
    return images.reshape(len(images), -1).float() / 255.0


def sharpness(images: torch.Tensor) -> float:
    """Mean squared response of the 3x3 Laplacian over uint8 images (N, C, H, W) in [0, 1]
    units: blur lowers it, noise raises it. Reported relative to the real train images."""
    x = images.float() / 255.0
    c = x.shape[1]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).repeat(c, 1, 1, 1)
    return float(F.conv2d(x, kernel, groups=c).pow(2).mean())


def compute_reference(extractor: FeatureSource, train: ImageSplit, test: ImageSplit, pr_k: int, dc_k: int,
                      batch_size: int) -> Reference:
    """Every real-side figure of the metrics for ``train`` (the reference) and ``test`` (held
    out), features extracted ``batch_size`` images at a time (as evaluation extracts them)."""
    for key, k in (("evaluate.pr_k", pr_k), ("evaluate.dc_k", dc_k)):
        if k >= len(train):
            raise InputError(f"{key}: k={k} needs 1 <= k < the {len(train)} train images")
    train_features, _ = extractor.features_and_probs(train.images, batch_size, probs=False)
    heldout_features, heldout_probs = extractor.features_and_probs(test.images, batch_size)
    counts = torch.bincount(train.labels.long(), minlength=train.num_classes).double()
    train_px = pixels(train.images)
    return Reference(
        dataset_sha256=train.card["sha256"], extractor_id=extractor.id, pr_k=pr_k, dc_k=dc_k,
        train_features=train_features, fid=M.feature_gaussian(train_features),
        pr_radii=M.knn_radii(train_features, pr_k), dc_radii=M.knn_radii(train_features, dc_k),
        label_distribution=counts / counts.sum(), train_sharpness=sharpness(train.images),
        train_scale=M.train_scale(train_px), heldout_features=heldout_features, heldout_probs=heldout_probs,
        heldout_sharpness=sharpness(test.images), heldout_to_train=M.nearest_train_distances(train_px, pixels(test.images)),
        train_pixels=train_px,
    )


def _scalar(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)  # a Python float is a float64: stored exactly


def _tensors(ref: Reference) -> dict[str, torch.Tensor]:
    out = {
        "train_features": ref.train_features, "fid_center": ref.fid.center, "fid_mean": ref.fid.mean,
        "fid_cov": ref.fid.cov, "pr_radii": ref.pr_radii, "dc_radii": ref.dc_radii,
        "label_distribution": ref.label_distribution, "train_sharpness": _scalar(ref.train_sharpness),
        "train_scale": _scalar(ref.train_scale), "heldout_features": ref.heldout_features,
        "heldout_sharpness": _scalar(ref.heldout_sharpness), "heldout_to_train": ref.heldout_to_train,
    }
    if ref.heldout_probs is not None:
        out["heldout_probs"] = ref.heldout_probs
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def write_reference(folder: Path, ref: Reference, batch_size: int) -> dict[str, Any]:
    """Write reference.pt and reference.json into ``folder`` (the features stage's temp folder,
    committed with the network); returns the card written."""
    buf = io.BytesIO()
    tensors = _tensors(ref)
    torch.save(tensors, buf)
    data = buf.getvalue()
    (folder / TENSORS).write_bytes(data)
    card = {
        "dataset_sha256": ref.dataset_sha256, "extractor_id": ref.extractor_id, "splits": SPLITS,
        "num_images": {"reference": len(ref.train_features), "heldout": len(ref.heldout_features)},
        "pr_k": ref.pr_k, "dc_k": ref.dc_k, "batch_size": batch_size,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "file": TENSORS, "sha256": hashlib.sha256(data).hexdigest(),
    }
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
        if not all(isinstance(card.get(k), t) for k, t in
                   (("dataset_sha256", str), ("extractor_id", str), ("sha256", str), ("pr_k", int), ("dc_k", int))):
            raise KeyError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError):
        raise InputError(f"{path}: not a reference statistics card; {AGAIN}") from None
    return card


def _read_tensors(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise InputError(f"{path}: sha256 does not match {path.with_name(CARD)}; {AGAIN}")
    try:
        tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # foreign or unsafe to unpickle: one line
        raise InputError(f"{path}: not readable reference statistics ({type(exc).__name__}); {AGAIN}") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise InputError(f"{path}: not a mapping of names to tensors; {AGAIN}")
    return tensors


def _check_shapes(t: dict[str, torch.Tensor], path: Path, num_features: int | None) -> None:
    """The tensors agree with one another (and with the extractor's feature dimension)."""
    try:
        n, d = t["train_features"].shape
        m = t["heldout_features"].shape[0]
        want = {"fid_center": (d,), "fid_mean": (d,), "fid_cov": (d, d), "pr_radii": (n,), "dc_radii": (n,),
                "heldout_features": (m, d), "heldout_to_train": (m,), "train_sharpness": (),
                "train_scale": (), "heldout_sharpness": ()}
        ok = all(tuple(t[k].shape) == s for k, s in want.items()) and t["label_distribution"].dim() == 1
        ok = ok and ("heldout_probs" not in t or (t["heldout_probs"].dim() == 2 and len(t["heldout_probs"]) == m))
        ok = ok and (num_features is None or d == num_features)
    except (KeyError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{path}: its tensors are not the reference statistics this genpipe reads; {AGAIN}")


def read_reference(folder: Path | str, dataset_sha256: str, extractor_id: str, pr_k: int, dc_k: int,
                   num_features: int | None = None) -> Reference:
    """The reference statistics in ``folder``, checked to belong to the dataset ``dataset_sha256``,
    the extractor ``extractor_id`` and these k; ``train_pixels`` is left None (it comes from
    the data). Anything else is an :class:`InputError` naming the file."""
    folder = Path(folder)
    card_path, tensor_path = folder / CARD, folder / TENSORS
    for path in (card_path, tensor_path):
        if not path.exists():
            raise InputError(f"{path}: no reference statistics of the real data; {AGAIN}")
    card = _read_card(card_path)
    if card["dataset_sha256"] != dataset_sha256:
        raise InputError(f"{card_path}: computed on dataset {card['dataset_sha256'][:12]}, but the prepared data is "
                         f"{dataset_sha256[:12]}; {AGAIN}")
    if card["extractor_id"] != extractor_id:
        raise InputError(f"{card_path}: computed with feature extractor {card['extractor_id']}, but evaluation "
                         f"uses {extractor_id}; {AGAIN}")
    for key, k in (("pr_k", pr_k), ("dc_k", dc_k)):
        if card[key] != k:
            raise InputError(f"{card_path}: k-NN radii for evaluate.{key}={card[key]}, but evaluate.{key}={k} now; "
                             f"{AGAIN} with the same settings")
    t = _read_tensors(tensor_path, card["sha256"])
    _check_shapes(t, tensor_path, num_features)
    f64 = {k: v.to(torch.float64) for k, v in t.items()}
    return Reference(
        dataset_sha256=dataset_sha256, extractor_id=extractor_id, pr_k=pr_k, dc_k=dc_k,
        train_features=f64["train_features"],
        fid=M.FeatureGaussian(f64["fid_center"], f64["fid_mean"], f64["fid_cov"], len(f64["train_features"])),
        pr_radii=f64["pr_radii"], dc_radii=f64["dc_radii"], label_distribution=f64["label_distribution"],
        train_sharpness=float(f64["train_sharpness"]), train_scale=float(f64["train_scale"]),
        heldout_features=f64["heldout_features"], heldout_probs=f64.get("heldout_probs"),
        heldout_sharpness=float(f64["heldout_sharpness"]), heldout_to_train=f64["heldout_to_train"],
    )
