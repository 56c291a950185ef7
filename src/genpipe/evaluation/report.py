"""The comparison report: every family's numbers, measured one way, side by side.

``genpipe report`` (and the last task of the pipeline flow) reads ``metrics/<family>.json``
written by the evaluate stage, scores the held-out real images with the same extractor as a
reference row (from the reference statistics the features stage stored), and writes

* ``reports/comparison.md`` and ``reports/comparison.html`` (templates in ``templates/``,
  rendered by :mod:`genpipe.evaluation.render`): one row per family (and per sampling setting
  of a sweep) with quality, diversity, likelihood, sampling speed,
  training cost; a sample grid per family; the plots; and the verdict on the introductions'
  ordering, computed from the numbers (each family's own claims come from its spec,
  :attr:`genpipe.models.base.Family.claims`);
* ``reports/figures/``: FID against NFE, precision against recall, training losses (from
  MLflow), and each family's sample grid;
* ``reports/comparison.json`` (DVC metrics: the real-data row, under the same keys as every
  ``metrics/<family>.json``, and which family leads by FID, bits/dim and speed),
  ``reports/plots/*.json`` (DVC plots) and ``reports/provenance.json`` (every row of the table
  and what produced it; linked from the report).

Every number names what produced it: dataset and checkpoint sha256, extractor id, sample
count, sampler and NFE, seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genpipe.artifacts import provenance_path
from genpipe.config import Config
from genpipe.errors import InputError
from genpipe.evaluation import render
from genpipe.evaluation.features import load_extractor
from genpipe.evaluation.quality import load_reference, reference_quality
from genpipe.evaluation.report_plots import loss_histories, write_plots
from genpipe.models import FAMILIES
from genpipe.results import EvaluationResult, Quality
from genpipe.storage import atomic_write_bytes

plain = render.plain  # a verdict line for a terminal


def _read_results(cfg: Config) -> dict[str, EvaluationResult]:
    out = {}
    for family in cfg.families:
        path = provenance_path(cfg.paths.metrics, family)
        if not path.exists():
            raise InputError(f"{path}: no evaluation of {family}; run `genpipe evaluate --family {family}` first")
        out[family] = EvaluationResult.read(path)
    ids = {r.quality.extractor_id for r in out.values()}
    if len(ids) > 1:  # numbers from different extractors never share a column
        raise InputError(f"{cfg.paths.metrics}: families were scored by different feature extractors {sorted(ids)}; "
                         "evaluate them again with one")
    return out


def real_reference(cfg: Config) -> Quality:
    """The held-out real images (test split) through the same metrics: the floor a perfect
    generator would reach at that sample count. Their features come stored with the reference
    statistics (the features stage), so no image is read or extracted here."""
    ref = load_reference(cfg, load_extractor(cfg), with_pixels=False)
    return Quality(**reference_quality(ref, cfg))


def _same_extractor(results: dict[str, EvaluationResult], real: Quality, cfg: Config) -> None:
    """The real-data row must come from the extractor that scored the families."""
    ids = {r.quality.extractor_id for r in results.values()}
    if real.extractor_id not in ids:
        raise InputError(f"{cfg.paths.metrics}: scored by feature extractor {sorted(ids)[0]}, but "
                         f"{cfg.paths.models}/features now holds {real.extractor_id}; "
                         "run `genpipe evaluate` again for every family")


def _rows(results: dict[str, EvaluationResult], real: Quality) -> list[dict[str, Any]]:
    """The table's rows: each family's figures under the keys of ``metrics/<family>.json``
    (:meth:`EvaluationResult.summary`), its sweep settings, and the real-data row."""
    rows = []
    for family, r in results.items():
        rows.append({**r.summary(), "model": family, "sampler": r.sampler or "—",
                     "fid_seeds": _seed_spread(r), "seed": r.quality.seed, "checkpoint": r.checkpoint_sha256[:12]})
        for s in r.sweep or []:  # its own (smaller) n: marked in the row, not only in the n column
            rows.append({"model": family, "sampler": f"{s.setting} (sweep, n={s.num_samples})",
                         **{k: getattr(s, k) for k in ("fid", "kid", "precision", "recall", "nfe", "images_per_s", "seed")},
                         "num_samples": s.num_samples, "checkpoint": r.checkpoint_sha256[:12], "sweep": True})
    rows.append({"model": "real (test split)", "sampler": "—", **real.summary()})
    return rows


def _seed_spread(r: EvaluationResult) -> str | None:
    """FID over the training seeds as "mean ± sd (n seeds)", or None without replicates."""
    if r.seeds is None:
        return None
    return f"{r.seeds.fid_mean:.3g} ± {r.seeds.fid_std:.2g} ({len(r.seeds.fid)} seeds)"


def verdict(results: dict[str, EvaluationResult], losses: dict) -> list[str]:
    """What the numbers say about the introductions' ordering, each claim checked: the ranking by
    FID and by likelihood, then the claims of each evaluated family's spec."""
    q = {f: r.quality for f, r in results.items()}
    by_fid = sorted(q, key=lambda f: q[f].fid)
    lines = [f"Best image quality by FID: **{by_fid[0]}** (FID {q[by_fid[0]].fid:.3g}); order: "
             + " < ".join(f"{f} {q[f].fid:.3g}" for f in by_fid) + "."]
    ll = {f: r.likelihood for f, r in results.items() if r.likelihood is not None}
    if ll:
        order = sorted(ll, key=lambda f: ll[f].bits_per_dim)
        kind = {f: "" if ll[f].kind == "exact" else " (bound)" for f in ll}
        lines.append("Likelihood (bits/dim, lower is better; a bound is an upper bound on the true figure): "
                     + " < ".join(f"{f} {ll[f].bits_per_dim:.3f}{kind[f]}" for f in order) + ".")
    for family in results:
        if (claims := FAMILIES[family].claims) is not None:
            lines += claims(results, losses)
    return lines


def write_report(cfg: Config) -> dict[str, Any]:
    """Write reports/comparison.{md,html}, the plots, reports/comparison.json, reports/provenance.json
    and the DVC plot files."""
    results = _read_results(cfg)
    real = real_reference(cfg)
    _same_extractor(results, real, cfg)
    losses = loss_histories(results)
    folder = Path(cfg.paths.reports)
    plots = write_plots(results, real, losses, folder / "figures", cfg.evaluate.pr_k)
    images = _copy_figures(results, folder / "figures")
    rows = _rows(results, real)
    lines = verdict(results, losses)
    provenance = _provenance(results, cfg, rows)
    atomic_write_bytes(folder / "provenance.json", (json.dumps(provenance, indent=2) + "\n").encode())
    atomic_write_bytes(folder / "comparison.md", render.markdown(rows, lines, plots, images, provenance, folder).encode())
    atomic_write_bytes(folder / "comparison.html", render.html(rows, lines, plots, images, provenance, folder).encode())
    atomic_write_bytes(folder / "comparison.json", (json.dumps(_summary(results, real), indent=2) + "\n").encode())
    pr = [{"model": r["model"], "precision": r["precision"], "recall": r["recall"]} for r in rows if not r.get("sweep")]
    atomic_write_bytes(folder / "plots" / "precision_recall.json", (json.dumps(pr, indent=2) + "\n").encode())
    sweep = [{"model": f, "sampler": s.sampler, "nfe": s.nfe, "fid": s.fid} for f, r in results.items() for s in r.sweep or []]
    atomic_write_bytes(folder / "plots" / "fid_vs_nfe.json", (json.dumps(sweep, indent=2) + "\n").encode())
    return {"markdown": (folder / "comparison.md").as_posix(), "html": (folder / "comparison.html").as_posix(),
            "rows": rows, "verdict": lines, "provenance": provenance}


def _summary(results: dict[str, EvaluationResult], real: Quality) -> dict[str, Any]:
    """``reports/comparison.json``: the real-data row under the keys of ``metrics/<family>.json``
    (one more row of ``dvc metrics show``) and which family leads."""
    out: dict[str, Any] = {"model": "real (test split)", **real.summary()}
    out["best_fid"] = min(results, key=lambda f: results[f].quality.fid)
    ll = {f: r.likelihood.bits_per_dim for f, r in results.items() if r.likelihood is not None}
    if ll:
        out["best_bits_per_dim"] = min(ll, key=ll.get)
    out["fastest_sampling"] = max(results, key=lambda f: results[f].speed.images_per_s)
    return out


def _copy_figures(results: dict[str, EvaluationResult], folder: Path) -> dict[str, list[Path]]:
    """Each family's evaluation figures (samples, and interpolation / traversal where it has a
    latent space) copied beside the report: ``<kind>-<family>.png``."""
    out: dict[str, list[Path]] = {}
    for family, r in results.items():
        for src in map(Path, r.figures or [r.samples_png]):
            if src.exists():
                dst = folder / f"{src.stem}-{family}.png"
                atomic_write_bytes(dst, src.read_bytes())
                out.setdefault(family, []).append(dst)
    return out


def _provenance(results: dict[str, EvaluationResult], cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    any_r = next(iter(results.values()))
    return {
        "dataset_sha256": any_r.dataset_sha256,
        "extractor": any_r.extractor,
        "num_samples": any_r.quality.num_samples,  # what was scored, not today's params
        "seed": any_r.quality.seed if any_r.quality.seed is not None else cfg.seed,
        "families": {f: {"checkpoint_sha256": r.checkpoint_sha256, "checkpoint_step": r.checkpoint_step,
                         "mlflow_run_id": r.mlflow_run_id, "sampling": r.sampling, "sampler": r.sampler,
                         "nfe": r.speed.nfe,
                         "speed": {k: getattr(r.speed, k) for k in ("batch_size", "device", "threads", "timed_batches")}}
                     for f, r in results.items()},
        "rows": rows,
    }
