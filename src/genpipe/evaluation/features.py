"""The feature network of the distribution metrics (FID, KID, precision/recall, density/coverage,
Inception Score, class histogram).

Two extractors, chosen by ``features.extractor``:

``domain`` (the default)
    :class:`DomainClassifier`, a small CNN trained on the prepared train split by
    :func:`train_feature_net` (the ``genpipe features`` stage). Its features are the penultimate
    layer (``features.feature_dim`` wide, after the nonlinearity), its class probabilities the
    softmax of its logits. Pretrained ImageNet weights cannot be downloaded here, and an
    ImageNet network says little about 16x16 digits anyway; a classifier of the domain itself
    is what the FID literature uses for small datasets (e.g. LeNet features for MNIST).

``inception``
    Inception-v3 in the FID configuration (:mod:`genpipe.evaluation.inception`) with weights
    from a local file the user supplies (``features.inception_weights``); nothing is downloaded.

Layout of ``<paths.models>/features/`` (written as a whole, atomically)::

    classifier.pt   state dict of the DomainClassifier (torch.save; read with weights_only=True)
    card.json       id, architecture, accuracies, weights_sha256, dataset_sha256, steps, seconds
    reference.pt    the real data's reference statistics in the features of the extractor that
    reference.json  ``features.extractor`` names (:mod:`genpipe.evaluation.reference`)

Both extractors take images as stored (uint8 ``(N, C, H, W)``, what ``genpipe.data.to_uint8``
makes of a family's samples) and return float64 tensors on the CPU.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genpipe import tracking
from genpipe.config import Config
from genpipe.data import load_split, read_card
from genpipe.images import to_model_range
from genpipe.errors import InputError
from genpipe.evaluation.inception import InceptionV3FID, load_fid_inception
from genpipe.evaluation.reference import CARD as REFERENCE_CARD
from genpipe.evaluation.reference import compute_reference, write_reference
from genpipe.models.nets.conv import group_norm
from genpipe.runtime import isolated_rng, progress_bar
from genpipe.storage import atomic_directory, sha256_file
from genpipe.training.loop import batch_indices, lr_factor

FEATURES_DIR = "features"
WEIGHTS = "classifier.pt"
CARD = "card.json"
EVAL_EVERY = 100  # optimizer steps between validation passes (and one at the end)


def features_dir(models_dir: Path | str) -> Path:
    """``<paths.models>/features``: where the domain classifier and its card live."""
    return Path(models_dir) / FEATURES_DIR


# ----------------------------------------------------------------------------- the network


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), group_norm(c_out), nn.SiLU()]


class DomainClassifier(nn.Module):
    """A small CNN classifier of ``(C, H, W)`` images in [-1, 1].

    Per level: two (conv3x3, GroupNorm, SiLU) blocks, then 2x average pooling. The first level
    is ``width`` channels wide, each further one twice the last (at most ``4 * width``); there
    are ``log2(min(H, W)) - 2`` levels (16x16 -> 2 levels, 4x4 at the end; 32 -> 3; 64 -> 4),
    at least one. Then global average pooling, ``Linear(., feature_dim)`` + SiLU (the
    features) and ``Linear(feature_dim, num_classes)`` (the logits).
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        c, h, w = (int(s) for s in shape)
        if min(h, w) < 4:
            raise ValueError(f"DomainClassifier needs images of at least 4x4 pixels (got {h}x{w})")
        self.shape = (c, h, w)
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.feature_dim = int(feature_dim)
        levels = max(1, int(math.log2(min(h, w))) - 2)
        layers: list[nn.Module] = []
        ch = c
        for i in range(levels):
            out = width * 2 ** min(i, 2)
            layers += _conv_block(ch, out) + _conv_block(out, out) + [nn.AvgPool2d(2)]
            ch = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(ch, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def architecture(self) -> dict[str, Any]:
        """What the card records to rebuild this network."""
        return {
            "name": type(self).__name__,
            "width": self.width,
            "feature_dim": self.feature_dim,
            "input_shape": list(self.shape),
            "num_classes": self.num_classes,
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [-1, 1] -> (N, feature_dim)
        return self.embed(self.body(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:  # (N, feature_dim) -> (N, num_classes)
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits
        return self.classify(self.features(x))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own (dy, dx) in [-max_shift, max_shift]^2, edges replicated.

    The offsets come from ``generator`` (a CPU generator), so a seed fixes them on any device.
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    off = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + off[0][:, None]  # (n, h)
    cols = torch.arange(w, device=x.device)[None, :] + off[1][:, None]  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Share of ``images`` (uint8) that ``net`` classifies as ``labels``."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i : i + batch_size].to(device))
        correct += int((net(x).argmax(1).cpu() == labels[i : i + batch_size]).sum())
    net.train(was_training)
    return correct / max(1, len(images))


def _state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- training


def train_feature_net(cfg: Config, device: torch.device | str = "cpu", progress: bool = True,
                      parent_run_id: str | None = None) -> dict[str, Any]:
    """Train the domain classifier on ``cfg.paths.data`` and write ``<paths.models>/features``.

    AdamW with a short linear warm-up and cosine decay, random shifts of up to
    ``features.augment_shift`` pixels; the kept weights are those of the best validation
    accuracy (checked every 100 steps and at the end; the train split stands in when the val
    split is empty). Seeded by ``cfg.seed``: on the CPU two runs give the same bytes (the
    same ``weights_sha256``) given the same thread count. Beside the network it writes the real
    data's reference statistics (:mod:`genpipe.evaluation.reference`) in the features of the
    extractor evaluation will load (on the CPU, as evaluation loads it), so that no evaluation
    recomputes them. Once the folder is written, the training is recorded as an MLflow run of its
    own (nested under ``parent_run_id`` if given): :func:`track_feature_net`. Returns the card written.
    """
    fc = cfg.features
    device = torch.device(device)
    t0 = time.perf_counter()
    data_card = read_card(cfg.paths.data)
    train = load_split(cfg.paths.data, "train")
    val_split = "val" if int(data_card.get("counts", {}).get("val", 0)) > 0 else "train"
    val = load_split(cfg.paths.data, "val") if val_split == "val" else train
    test = load_split(cfg.paths.data, "test")

    with isolated_rng(cfg.seed):  # the pipeline builds models in other threads meanwhile (their pre-flight)
        net = DomainClassifier(train.shape, train.num_classes, fc.width, fc.feature_dim).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=fc.lr, weight_decay=fc.weight_decay)
    warmup = min(100, fc.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, fc.steps, warmup, 0.0))
    shifts = torch.Generator().manual_seed(cfg.seed + 1)
    batch_size = min(fc.batch_size, len(train))
    images, labels = train.images.to(device), train.labels.to(device)

    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history: list[tuple[int, float, float]] = []  # (step, train loss, val accuracy) at each validation
    net.train()
    bar = progress_bar(fc.steps, "features", "step", enabled=progress)
    with bar:
        for step in range(fc.steps):
            idx = batch_indices(len(train), batch_size, cfg.seed, step, 0, 1).to(device)
            x = random_shift(to_model_range(images[idx]), fc.augment_shift, shifts)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if (step + 1) % EVAL_EVERY == 0 or step + 1 == fc.steps:
                acc = accuracy(net, val.images, val.labels)
                history.append((step + 1, loss.item(), acc))
                if best is None or acc >= best[0]:  # ties: the later (longer trained) weights
                    best = (acc, step + 1, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
                bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{acc:.3f}", refresh=False)

    assert best is not None
    val_acc, best_step, state = best
    net.load_state_dict(state)
    weights = _state_bytes(state)
    out = features_dir(cfg.paths.models)
    with atomic_directory(out) as tmp:
        (tmp / WEIGHTS).write_bytes(weights)
        sha = hashlib.sha256(weights).hexdigest()
        card = {
            "id": f"domain-cnn-{sha[:12]}",
            "extractor": "domain",
            "architecture": net.architecture(),
            "feature_dim": fc.feature_dim,
            "num_classes": train.num_classes,
            "class_names": data_card.get("class_names"),
            "train_accuracy": accuracy(net, train.images, train.labels),
            "val_accuracy": val_acc,
            "val_split": val_split,
            "test_accuracy": accuracy(net, test.images, test.labels),
            "num_images": {"train": len(train), "val": len(val) if val_split == "val" else 0, "test": len(test)},
            "best_step": best_step,
            "steps": fc.steps,
            "params": fc.model_dump(mode="json"),
            "seed": cfg.seed,
            "weights": WEIGHTS,
            "weights_sha256": sha,
            "dataset_sha256": data_card["sha256"],
            "device": device.type,
            "torch_version": torch.__version__,
            "seconds": time.perf_counter() - t0,
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        e = cfg.evaluate
        reference = compute_reference(load_extractor(cfg, folder=tmp), train, test, e.pr_k, e.dc_k, e.batch_size)
        write_reference(tmp, reference, e.batch_size)
    track_feature_net(cfg, card, data_card, history, out, parent_run_id)
    return card


def track_feature_net(cfg: Config, card: dict[str, Any], data_card: dict[str, Any],
                      history: list[tuple[int, float, float]], folder: Path, parent_run_id: str | None) -> str:
    """The feature network's MLflow run ``features-<dataset>``: its settings, the loss and
    validation accuracy per validation step, the accuracies, the dataset input, the card and
    weights as artifacts; tagged with the extractor id every metric names. Returns its id."""
    uri = tracking.tracking_uri()
    tags = {"genpipe.role": "feature-extractor", "genpipe.extractor_id": card["id"],
            "genpipe.dataset_sha256": data_card["sha256"], "genpipe.git_commit": tracking.git_commit()}
    params = tracking.flatten_params({"seed": cfg.seed, "features": cfg.features.model_dump(mode="json")})
    run_id = tracking.start_run(cfg.tracking.experiment, f"features-{data_card['source']}", params, tags, parent_run_id, uri)
    ok = False
    try:
        tracking.log_dataset(run_id, data_card, cfg.paths.data, uri=uri)
        for step, loss, acc in history:
            tracking.log_metrics(run_id, {"loss": loss, "val_accuracy": acc}, step=step, uri=uri)
        final = {"train_accuracy": card["train_accuracy"], "best_val_accuracy": card["val_accuracy"],
                 "test_accuracy": card["test_accuracy"], "seconds": card["seconds"]}
        tracking.log_metrics(run_id, final, step=card["steps"], uri=uri)
        for name in (CARD, WEIGHTS, REFERENCE_CARD):
            tracking.log_artifact(run_id, folder / name, "features", uri=uri)
        ok = True
    finally:
        tracking.end_run(run_id, ok=ok, uri=uri)
    return run_id


# ----------------------------------------------------------------------------- extraction


class Extractor:
    """A feature network in eval mode, fed uint8 images.

    ``id`` names the network and its weights (it goes into every metric computed with it);
    ``num_features`` is D of :meth:`features`; ``num_classes`` is K of :meth:`probs` (None
    when the network has no classifier head).
    """

    def __init__(self, net: nn.Module, id: str, num_features: int, num_classes: int | None,
                 input_shape: tuple[int, int, int] | None = None, card: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.id = id
        self.num_features = int(num_features)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)  # None: any C in {1, 3}, any H, W
        self.card = card or {}

    def __repr__(self) -> str:
        return f"Extractor(id={self.id!r}, num_features={self.num_features}, num_classes={self.num_classes})"

    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected uint8 images (N, C, H, W), got {got}")
        if self.input_shape is not None and tuple(images.shape[1:]) != self.input_shape:
            raise InputError(f"feature network {self.id} takes {list(self.input_shape)} images, got "
                             f"{list(images.shape[1:])}; run `genpipe features` again for this dataset")
        if self.input_shape is None and images.shape[1] not in (1, 3):
            raise InputError(f"feature network {self.id} takes 1 or 3 channels, got {images.shape[1]}")

    @torch.no_grad()
    def features_and_probs(self, images: torch.Tensor, batch_size: int = 256, probs: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass: ``(N, D)`` features and ``(N, K)`` class probabilities (float64, CPU);
        no probabilities without a classifier head or with ``probs=False``."""
        want = probs and self.num_classes is not None
        self._check(images)
        feats, out = [], []
        for i in range(0, len(images), batch_size):
            x = to_model_range(images[i : i + batch_size].to(self.device))
            f = self.net.features(x)
            feats.append(f.double().cpu())
            if want:
                out.append(torch.softmax(self.net.classify(f).double(), dim=1).cpu())
        feats_t = torch.cat(feats) if feats else torch.empty(0, self.num_features, dtype=torch.float64)
        if not want:
            return feats_t, None
        probs_t = torch.cat(out) if out else torch.empty(0, self.num_classes, dtype=torch.float64)
        return feats_t, probs_t

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """``(N, D)`` float64 features of uint8 ``(N, C, H, W)`` images."""
        return self.features_and_probs(images, batch_size, probs=False)[0]

    def probs(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor | None:
        """``(N, K)`` float64 class probabilities, or None without a head: the domain classifier's
        softmax, or for Inception the softmax of its 1008 Inception Score logits."""
        if self.num_classes is None:
            return None
        return self.features_and_probs(images, batch_size)[1]


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe to unpickle: one line
        raise InputError(f"{path}: not a readable torch state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return state


def _load_domain(cfg: Config, device: torch.device | str, folder: Path | None = None) -> Extractor:
    folder = features_dir(cfg.paths.models) if folder is None else folder
    card_path, weights_path = folder / CARD, folder / WEIGHTS
    for path in (card_path, weights_path):
        if not path.exists():
            raise InputError(f"{path}: no feature network; run `genpipe features` first")
    try:
        card = json.loads(card_path.read_text())
        arch = card["architecture"]
        expected_sha = card["weights_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{card_path}: not a feature network card; run `genpipe features` again") from None
    if sha256_file(weights_path) != expected_sha:
        raise InputError(f"{weights_path}: sha256 does not match {card_path}; run `genpipe features` again")
    if arch.get("name") != DomainClassifier.__name__:
        raise InputError(f"{card_path}: unknown architecture {arch.get('name')!r}; run `genpipe features` again")
    net = DomainClassifier(tuple(arch["input_shape"]), arch["num_classes"], arch["width"], arch["feature_dim"])
    try:
        net.load_state_dict(_read_state(weights_path))
    except RuntimeError:
        raise InputError(f"{weights_path}: its weights do not fit today's DomainClassifier; "
                         "run `genpipe features` again") from None
    return Extractor(net, card.get("id") or f"domain-cnn-{expected_sha[:12]}", arch["feature_dim"], arch["num_classes"],
                     input_shape=tuple(arch["input_shape"]), card=card, device=device)


def _load_inception(cfg: Config, device: torch.device | str) -> Extractor:
    path = cfg.features.inception_weights
    if path is None:
        raise InputError("features.inception_weights: not set; extractor=inception needs a local copy of "
                         "pt_inception-2015-12-05-6726825d.pth (nothing is downloaded)")
    path = Path(path)
    net = load_fid_inception(path)
    sha = sha256_file(path)
    card = {"id": f"inception-v3-{sha[:12]}", "extractor": "inception", "weights": str(path), "weights_sha256": sha}
    return Extractor(net, card["id"], InceptionV3FID.FEATURE_DIM, InceptionV3FID.NUM_CLASSES,
                     card=card, device=device)


def load_extractor(cfg: Config, device: torch.device | str = "cpu", folder: Path | None = None) -> Extractor:
    """The feature network ``cfg.features.extractor`` names, ready in eval mode on ``device``;
    the domain classifier from ``folder`` (default ``<paths.models>/features``)."""
    if cfg.features.extractor == "domain":
        return _load_domain(cfg, device, folder)
    if cfg.features.extractor == "inception":
        return _load_inception(cfg, device)
    raise InputError(f"features.extractor: unknown extractor {cfg.features.extractor!r}")  # config validates it first
