"""The evaluate stage: one protocol for every family.

For the trained family: the held-out likelihood (bits/dim, exact or a bound, said which);
``evaluate.num_samples`` images from seed ``seed`` scored by every distribution metric
(:mod:`genpipe.evaluation.quality`: FID, KID, precision/recall, density/coverage,
Inception-style score and class histogram, memorisation, sharpness) in the features of the
extractor named in the result, the first ``evaluate.grid_samples`` of them shown as the sample
grid; sampling cost, timed on those same batches (:mod:`genpipe.evaluation.speed`); training cost
(steps and wall-clock of the checkpoint); with ``stability_seeds``, FID of the replicates
trained with those seeds and its spread; for diffusion, the sampler sweep
(``evaluate.diffusion_sweep``: FID against NFE).

Writes ``metrics/<family>.json`` (the DVC metrics: the figures a person compares, see
:mod:`genpipe.evaluation.summary`), ``metrics/<family>.provenance.json`` (the full record: every
number with what produced it, the sweep's rows too), ``figures/<family>/`` (the sample grid; for families with a latent
space also interpolations and traversals), and logs them to the family's training run in
MLflow. Every number carries what produced it: dataset and checkpoint sha256, extractor id,
sample count, sampler and NFE, seed.
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
from genpipe.data import load_split, read_card, to_model_range
from genpipe.errors import InputError
from genpipe.evaluation.grid import make_grid
from genpipe.evaluation.speed import TimedSamples, model_device, sample_timed, sampling_speed
from genpipe.evaluation.summary import family_summary, metrics_path, provenance_path
from genpipe.models import get_family, sampling_options
from genpipe.models.base import LatentModel
from genpipe.storage import atomic_write_bytes, sha256_file
from genpipe.training.checkpoint import FINAL, family_dir, load_model, seed_dir


def load_trained(cfg: Config, family: str, device: torch.device | str = "cpu",
                 seed: int | None = None) -> tuple[torch.nn.Module, dict]:
    """``models/<family>/checkpoint.pt`` (or, with a ``seed`` other than params' ``seed``, the
    replicate in ``models/<family>/seeds/<seed>/``) as an eval-mode model with its EMA weights."""
    get_family(family)
    if seed is None or seed == cfg.seed:
        path = family_dir(cfg.paths.models, family) / FINAL
        if not path.exists():
            raise InputError(f"{path}: no trained model; run `genpipe train --family {family}` first")
    else:
        path = seed_dir(cfg.paths.models, family, seed) / FINAL
        if not path.exists():
            raise InputError(f"{path}: no {family} trained with seed {seed} (stability_seeds); "
                             f"run `genpipe train --family {family} --seed {seed}`")
    card = read_card(cfg.paths.data)
    return load_model(path, card["shape"], card["num_classes"], device)


@torch.no_grad()
def heldout_likelihood(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                       seed: int = 0) -> dict[str, Any] | None:
    """Mean -log p(x) over ``images`` (uint8) in nats/image and bits/dim, or None; an
    estimator's noise comes from ``seed`` alone."""
    device = model_device(model)
    total, kind, estimator = 0.0, None, None
    generator = torch.Generator().manual_seed(seed)
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i : i + batch_size]).to(device)
        ll = model.log_likelihood(x, labels[i : i + batch_size].to(device), generator)
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
    likelihood = heldout_likelihood(model, test.images, test.labels, cfg.evaluate.batch_size, cfg.seed)
    options = sampling_options(cfg, family)
    scored = sample_timed(model, cfg.evaluate.num_samples, options, cfg.seed, cfg.evaluate.batch_size)
    grid = make_grid(scored.images[: cfg.evaluate.grid_samples])  # shows what was scored

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
    metrics |= protocol_metrics(cfg, family, model, options, state, metrics["checkpoint_sha256"], scored)
    metrics["seconds"] = time.perf_counter() - t0
    record_path, summary_path = provenance_path(metrics_dir, family), metrics_path(metrics_dir, family)
    atomic_write_bytes(record_path, (json.dumps(metrics, indent=2) + "\n").encode())
    atomic_write_bytes(summary_path, (json.dumps(family_summary(metrics), indent=2) + "\n").encode())

    run_id = metrics["mlflow_run_id"]
    if run_id:
        uri = tracking.tracking_uri()
        scalars = {f"eval/{k}": v for k, v in metrics["quality"].items() if isinstance(v, (int, float))}
        scalars |= {"eval/images_per_s": metrics["speed"]["images_per_s"], "eval/nfe": metrics["speed"]["nfe"]}
        if "seeds" in metrics:
            scalars |= {"eval/fid_seed_mean": metrics["seeds"]["fid_mean"], "eval/fid_seed_std": metrics["seeds"]["fid_std"]}
        if likelihood is not None:
            scalars |= {"test_nll_nats": likelihood["nll_nats"], "test_bits_per_dim": likelihood["bits_per_dim"]}
        tracking.log_metrics(run_id, scalars, step=state["step"], uri=uri)
        for path in (summary_path, record_path):
            tracking.log_artifact(run_id, path, "evaluation", uri=uri)
        for path in figure_paths:
            tracking.log_artifact(run_id, path, "evaluation", uri=uri)
    return metrics


def protocol_metrics(cfg: Config, family: str, model: torch.nn.Module, options: Any, state: dict,
                     checkpoint_sha256: str, scored: TimedSamples) -> dict[str, Any]:
    """The distribution metrics of ``scored`` (``evaluate.num_samples`` images of ``model``
    from seed ``seed``), sampling and training cost (and the sampler sweep)."""
    from genpipe.evaluation.features import load_extractor
    from genpipe.evaluation.quality import load_reference, sample_quality

    e = cfg.evaluate
    extractor = load_extractor(cfg)
    ref = load_reference(cfg, extractor)
    quality = sample_quality(scored.images, ref, extractor, cfg) | {"seed": cfg.seed, "generation_seconds": scored.seconds}
    out: dict[str, Any] = {
        "extractor": extractor.card,
        "quality": quality,
        "speed": sampling_speed(model, options, scored),
        "training": {"steps": state["step"], "seconds": state.get("train_seconds"),
                     "world_size": state.get("meta", {}).get("world_size"),
                     "precision": state.get("meta", {}).get("precision")},
    }
    if cfg.stability_seeds:
        out["seeds"] = seed_spread(cfg, family, options, extractor, ref, quality["fid"], checkpoint_sha256)
    if family == "diffusion" and e.diffusion_sweep:
        out["sweep"] = sampler_sweep(cfg, model, options, extractor, ref, scored)
    return out


def seed_spread(cfg: Config, family: str, options: Any, extractor: Any, ref: Any, fid: float,
                checkpoint_sha256: str) -> dict[str, Any]:
    """FID of the model trained with ``seed`` (``fid`` and ``checkpoint_sha256``, already known)
    and of each replicate trained with one of ``stability_seeds``, all sampled with the same
    noise seed and sample count; their mean and standard deviation (n - 1) are the spread across training seeds."""
    from genpipe.evaluation import metrics as M

    e = cfg.evaluate
    fids, shas = [fid], [checkpoint_sha256]
    for s in cfg.stability_seeds:
        replicate, _ = load_trained(cfg, family, seed=s)
        images = sample_timed(replicate, e.num_samples, options, cfg.seed, e.batch_size).images
        fids.append(M.frechet_distance(ref.train_features, extractor.features(images, e.batch_size)))
        shas.append(sha256_file(seed_dir(cfg.paths.models, family, s) / FINAL))
    mean = sum(fids) / len(fids)
    std = math.sqrt(sum((f - mean) ** 2 for f in fids) / (len(fids) - 1))
    return {"training_seeds": [cfg.seed, *cfg.stability_seeds], "fid": fids, "fid_mean": mean, "fid_std": std,
            "num_samples": e.num_samples, "sampling_seed": cfg.seed, "extractor_id": extractor.id,
            "checkpoint_sha256": shas}


def sampler_sweep(cfg: Config, model: torch.nn.Module, base: Any, extractor: Any, ref: Any,
                  main: TimedSamples | None = None) -> list[dict[str, Any]]:
    """FID, KID, precision/recall, NFE and images/s per sampler setting of
    ``evaluate.diffusion_sweep`` (each entry overrides ``diffusion.sampling``), all on
    ``evaluate.sweep_samples`` images from the same seed. ``main``: the main evaluation's
    timed images with the ``base`` setting; an entry equal to ``base`` scores their first
    ``sweep_samples`` and takes the main evaluation's speed instead of sampling again."""
    from genpipe.evaluation import metrics as M

    e, rows = cfg.evaluate, []
    for options in cfg.sweep_settings():
        if main is not None and options == base and len(main.images) >= e.sweep_samples:
            images, speed = main.images[: e.sweep_samples], sampling_speed(model, options, main)
        else:
            timed = sample_timed(model, e.sweep_samples, options, cfg.seed, e.batch_size)
            images, speed = timed.images, sampling_speed(model, options, timed)
        feats = extractor.features(images, e.batch_size)
        precision, recall = M.precision_recall(ref.train_features, feats, e.pr_k)
        rows.append({
            "sampler": options.sampler, "steps": options.steps if options.sampler != "ddpm" else None,
            "nfe": speed["nfe"], "num_samples": e.sweep_samples, "seed": cfg.seed,
            "fid": M.frechet_distance(ref.train_features, feats, key="evaluate.sweep_samples"),
            "kid": M.kernel_inception_distance(ref.train_features, feats, e.kid_subsets, e.kid_subset_size, seed=cfg.seed,
                                               key="evaluate.sweep_samples")[0],
            "precision": precision, "recall": recall,
            "images_per_s": speed["images_per_s"], "extractor_id": extractor.id,
            "sampling": options.model_dump(mode="json"),
        })
    return rows
