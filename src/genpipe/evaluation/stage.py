"""The evaluate stage (minimal protocol): held-out likelihood and a sample grid.

Writes ``metrics/<family>.json`` (a DVC metric) and ``figures/<family>/`` (the sample grid;
for families with a latent space also interpolations between seeds and, for flat latents,
single-dimension traversals), and logs them to the family's training run in MLflow. Every number carries what produced it:
dataset and checkpoint sha256, split and image count, estimator and whether it is a bound.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from genpipe.config import Config
from genpipe.data import load_split, read_card, to_model_range, to_uint8
from genpipe.errors import InputError
from genpipe.evaluation.grid import make_grid
from genpipe.models import get_family, sampling_options
from genpipe.models.base import LatentModel
from genpipe.storage import atomic_write_bytes, sha256_file
from genpipe.training.checkpoint import FINAL, family_dir, load_model


def load_trained(cfg: Config, family: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """``models/<family>/checkpoint.pt`` as an eval-mode model with its EMA weights."""
    get_family(family)
    path = family_dir(cfg.paths.models, family) / FINAL
    if not path.exists():
        raise InputError(f"{path}: no trained model; run `genpipe train --family {family}` first")
    card = read_card(cfg.paths.data)
    return load_model(path, card["shape"], card["num_classes"], device)


@torch.no_grad()
def heldout_likelihood(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict[str, Any] | None:
    """Mean -log p(x) over ``images`` (uint8) in nats/image and bits/dim, or None."""
    device = next(iter([*model.parameters(), *model.buffers()])).device
    total, kind, estimator = 0.0, None, None
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i : i + batch_size]).to(device)
        ll = model.log_likelihood(x, labels[i : i + batch_size].to(device))
        if ll is None:
            return None
        total += float(ll.nats.double().sum())
        kind, estimator = ll.kind, ll.estimator
    nll = -total / len(images)
    dims = images[0].numel()
    return {"nll_nats": nll, "bits_per_dim": nll / (dims * math.log(2)), "kind": kind, "estimator": estimator}


def evaluate_family(cfg: Config, family: str) -> dict[str, Any]:
    """Evaluate the trained ``family`` on the test split; returns the metrics written."""
    from genpipe import tracking

    t0 = time.perf_counter()
    model, state = load_trained(cfg, family)
    ckpt = family_dir(cfg.paths.models, family) / FINAL
    test = load_split(cfg.paths.data, "test")
    torch.manual_seed(cfg.seed)  # the ELBO's posterior samples
    likelihood = heldout_likelihood(model, test.images, test.labels, cfg.evaluate.batch_size)
    options = sampling_options(cfg, family)
    samples = model.sample(cfg.evaluate.grid_samples, generator=torch.Generator().manual_seed(cfg.seed), options=options)
    grid = make_grid(to_uint8(samples.float().cpu()))

    metrics_dir, figures = Path(cfg.paths.metrics), Path(cfg.paths.figures) / family
    grid_path = figures / "samples.png"
    metrics = {
        "family": family,
        "split": "test",
        "num_images": len(test),
        "likelihood": likelihood,
        "samples_png": grid_path.as_posix(),
        "sampling": options.model_dump(mode="json") if options is not None else None,
        "seed": cfg.seed,
        "dataset_sha256": test.card["sha256"],
        "checkpoint_sha256": sha256_file(ckpt),
        "checkpoint_step": state["step"],
        "mlflow_run_id": state["meta"].get("mlflow_run_id"),
    }
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(grid_path, buf.getvalue())
    figure_paths = [grid_path]
    if isinstance(model, LatentModel):
        from genpipe.generation.latents import write_latent_grids  # generation imports evaluation.grid

        figure_paths += write_latent_grids(model, figures, cfg.seed, cfg.seed + 1, options=options)
    metrics["figures"] = [p.as_posix() for p in figure_paths]
    metrics["seconds"] = time.perf_counter() - t0
    atomic_write_bytes(metrics_dir / f"{family}.json", (json.dumps(metrics, indent=2) + "\n").encode())

    run_id = metrics["mlflow_run_id"]
    if run_id:
        uri = tracking.tracking_uri()
        if likelihood is not None:
            tracking.log_metrics(
                run_id,
                {"test_nll_nats": likelihood["nll_nats"], "test_bits_per_dim": likelihood["bits_per_dim"]},
                step=state["step"],
                uri=uri,
            )
        tracking.log_artifact(run_id, metrics_dir / f"{family}.json", "evaluation", uri=uri)
        for path in figure_paths:
            tracking.log_artifact(run_id, path, "evaluation", uri=uri)
    return metrics
