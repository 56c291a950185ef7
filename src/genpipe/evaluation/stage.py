"""The evaluate stage: one protocol for every family.

For the trained family: the held-out likelihood (bits/dim, exact or a bound, said which);
``evaluate.num_samples`` images from seed ``seed`` scored by every distribution metric
(:mod:`genpipe.evaluation.quality`: FID, KID, precision/recall, density/coverage,
Inception-style score and class histogram, memorisation, sharpness) in the features of the
extractor named in the result, the first ``evaluate.grid_samples`` of them shown as the sample
grid; sampling cost, timed on those same batches (:mod:`genpipe.evaluation.speed`); training cost
(steps and wall-clock of the checkpoint); with ``stability_seeds``, FID of the replicates
trained with those seeds and its spread; for a family listed in ``evaluate.sweep``, its
sampling settings' sweep (FID against NFE).

:func:`measure` computes all of it (an :class:`~genpipe.results.EvaluationResult` and the
figures), writing and logging nothing; :func:`evaluate_family`, the stage, writes
``metrics/<family>.json`` (the DVC metrics: the figures a person compares, see
:mod:`genpipe.evaluation.summary`), ``metrics/<family>.provenance.json`` (the full record: every
number with what produced it, the sweep's rows too), ``figures/<family>/`` (the sample grid; for families with a latent
space also interpolations and traversals), and logs them to the family's training run in
MLflow. Every number carries what produced it: dataset and checkpoint sha256, extractor id,
sample count, sampler and NFE, seed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from genpipe import tracking
from genpipe.artifacts import load_trained, metrics_path, provenance_path, trained_checkpoint
from genpipe.config import Config
from genpipe.data import load_split
from genpipe.evaluation import metrics as M
from genpipe.evaluation.features import Extractor, load_extractor
from genpipe.evaluation.quality import Reference, load_reference, sample_quality
from genpipe.evaluation.speed import TimedSamples, model_device, sample_timed, sampling_speed
from genpipe.generation.latents import latent_grids
from genpipe.images import encode_png, make_grid, to_model_range
from genpipe.models import sampling_options
from genpipe.models.base import LatentModel
from genpipe.results import EvaluationResult, Likelihood, Quality, SeedSpread, Speed, SweepRow, Training
from genpipe.sections import SamplingSection
from genpipe.storage import atomic_write_bytes, sha256_file


@torch.no_grad()
def heldout_likelihood(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                       seed: int = 0) -> Likelihood | None:
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
    return Likelihood(nll_nats=nll, bits_per_dim=nll / (dims * math.log(2)), kind=kind, estimator=estimator)


def evaluate_family(cfg: Config, family: str) -> EvaluationResult:
    """The evaluate stage: :func:`measure` the trained ``family``, write its figures and metrics
    files, log them to its training run; returns what was written."""
    t0 = time.perf_counter()
    model, state = load_trained(cfg, family)
    result, figures = measure(cfg, family, model, state, sha256_file(trained_checkpoint(cfg.paths.models, family)))
    for path, image in figures.items():
        atomic_write_bytes(path, encode_png(image))
    result = result.model_copy(update={"seconds": time.perf_counter() - t0})
    record_path, summary_path = provenance_path(cfg.paths.metrics, family), metrics_path(cfg.paths.metrics, family)
    atomic_write_bytes(record_path, (json.dumps(result.record(), indent=2) + "\n").encode())
    atomic_write_bytes(summary_path, (json.dumps(result.summary(), indent=2) + "\n").encode())
    if run_id := result.mlflow_run_id:
        uri = tracking.tracking_uri()
        tracking.log_metrics(run_id, result.scalars(), step=result.checkpoint_step, uri=uri)
        for path in (summary_path, record_path, *figures):
            tracking.log_artifact(run_id, path, "evaluation", uri=uri)
    return result


def measure(cfg: Config, family: str, model: torch.nn.Module, state: dict[str, Any],
            checkpoint_sha256: str) -> tuple[EvaluationResult, dict[Path, Image.Image]]:
    """Every number of the protocol for the trained ``model`` (its checkpoint ``state``), and the
    figures to show beside them (sample grid; interpolation and traversal for a latent space) by
    the path they belong at; nothing is written."""
    extractor = load_extractor(cfg)  # first: a missing or stale reference fails before any sampling
    ref = load_reference(cfg, extractor)
    test = load_split(cfg.paths.data, "test")
    likelihood = heldout_likelihood(model, test.images, test.labels, cfg.evaluate.batch_size, cfg.seed)
    options = sampling_options(cfg, family)
    scored = sample_timed(model, cfg.evaluate.num_samples, options, cfg.seed, cfg.evaluate.batch_size)
    folder = Path(cfg.paths.figures) / family
    figures = {folder / "samples.png": make_grid(scored.images[: cfg.evaluate.grid_samples])}  # what was scored
    if isinstance(model, LatentModel):
        figures |= {folder / f"{name}.png": grid for name, grid in
                    latent_grids(model, cfg.seed, cfg.seed + 1, options=options).items()}
    quality = Quality(**sample_quality(scored.images, ref, extractor, cfg), seed=cfg.seed, generation_seconds=scored.seconds)
    meta = state.get("meta", {})
    result = EvaluationResult(
        family=family, split="test", num_images=len(test), likelihood=likelihood,
        samples_png=(folder / "samples.png").as_posix(),
        sampling=options.model_dump(mode="json") if options is not None else None,
        sampler=options.label() if options is not None else None,
        seed=cfg.seed, dataset_sha256=test.card["sha256"], checkpoint_sha256=checkpoint_sha256,
        checkpoint_step=state["step"], mlflow_run_id=meta.get("mlflow_run_id"),
        figures=[p.as_posix() for p in figures], extractor=extractor.card, quality=quality,
        speed=Speed(**sampling_speed(model, options, scored)),
        training=Training(steps=state["step"], seconds=state.get("train_seconds"), world_size=meta.get("world_size"),
                          precision=meta.get("precision")),
        seeds=seed_spread(cfg, family, options, extractor, ref, quality.fid, checkpoint_sha256) if cfg.stability_seeds else None,
        sweep=sampler_sweep(cfg, family, model, options, extractor, ref, scored) or None,
    )
    return result, figures


def seed_spread(cfg: Config, family: str, options: SamplingSection | None, extractor: Extractor, ref: Reference,
                fid: float, checkpoint_sha256: str) -> SeedSpread:
    """FID of the model trained with ``seed`` (``fid`` and ``checkpoint_sha256``, already known)
    and of each replicate trained with one of ``stability_seeds``, all sampled with the same
    noise seed and sample count; their mean and standard deviation (n - 1) are the spread across training seeds."""
    e = cfg.evaluate
    fids, shas = [fid], [checkpoint_sha256]
    for s in cfg.stability_seeds:
        replicate, _ = load_trained(cfg, family, seed=s)
        images = sample_timed(replicate, e.num_samples, options, cfg.seed, e.batch_size).images
        fids.append(M.frechet_distance(None, extractor.features(images, e.batch_size), real_stats=ref.fid))
        shas.append(sha256_file(trained_checkpoint(cfg.paths.models, family, s)))
    mean = sum(fids) / len(fids)
    std = math.sqrt(sum((f - mean) ** 2 for f in fids) / (len(fids) - 1))
    return SeedSpread(training_seeds=[cfg.seed, *cfg.stability_seeds], fid=fids, fid_mean=mean, fid_std=std,
                      num_samples=e.num_samples, sampling_seed=cfg.seed, extractor_id=extractor.id,
                      checkpoint_sha256=shas)


def sampler_sweep(cfg: Config, family: str, model: torch.nn.Module, base: SamplingSection | None,
                  extractor: Extractor, ref: Reference, main: TimedSamples | None = None) -> list[SweepRow]:
    """FID, KID, precision/recall, NFE and images/s per sampling setting of
    ``evaluate.sweep.<family>`` (each entry overrides ``<family>.sampling``), all on
    ``evaluate.sweep_samples`` images from the same seed. ``main``: the main evaluation's
    timed images with the ``base`` setting; an entry equal to ``base`` scores their first
    ``sweep_samples`` and takes the main evaluation's speed instead of sampling again."""
    e, rows = cfg.evaluate, []
    for options in cfg.sweep_settings(family):
        if main is not None and options == base and len(main.images) >= e.sweep_samples:
            images, speed = main.images[: e.sweep_samples], sampling_speed(model, options, main)
        else:
            timed = sample_timed(model, e.sweep_samples, options, cfg.seed, e.batch_size)
            images, speed = timed.images, sampling_speed(model, options, timed)
        feats = extractor.features(images, e.batch_size)
        precision, recall = M.precision_recall(ref.train_features, feats, e.pr_k, real_radii=ref.pr_radii)
        rows.append(SweepRow(
            sampler=options.series(), setting=options.label(), nfe=speed["nfe"], num_samples=e.sweep_samples, seed=cfg.seed,
            fid=M.frechet_distance(None, feats, key="evaluate.sweep_samples", real_stats=ref.fid),
            kid=M.kernel_inception_distance(ref.train_features, feats, e.kid_subsets, e.kid_subset_size, seed=cfg.seed,
                                            key="evaluate.sweep_samples")[0],
            precision=precision, recall=recall, images_per_s=speed["images_per_s"], extractor_id=extractor.id,
            sampling=options.model_dump(mode="json"),
        ))
    return rows
