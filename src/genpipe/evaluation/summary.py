"""The figures a person compares, as DVC metrics files (``dvc metrics show``, ``dvc exp show``).

The evaluate stage keeps two files per family:

* ``metrics/<family>.json``: this module's flat summary, the same keys for every family (and for
  the real-data row of ``reports/comparison.json``), so DVC's table has one row per file and
  one column per figure;
* ``metrics/<family>.provenance.json``: the full record (every number with what produced it:
  dataset and checkpoint sha256, extractor card, sampler options, figure paths, per-class
  fractions, the sampler sweep, the replicates' FIDs), which the report reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

QUALITY_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "inception_score",
                "classes_covered", "class_kl", "sharpness_ratio")


def metrics_path(folder: Path | str, family: str) -> Path:
    return Path(folder) / f"{family}.json"


def provenance_path(folder: Path | str, family: str) -> Path:
    return Path(folder) / f"{family}.provenance.json"


def sampler_name(sampling: dict | None) -> str | None:
    """A sampling setting in a few characters: ``ddpm``, ``ddim-50``, ``temperature=0.9``."""
    if not sampling:
        return None
    if "sampler" in sampling:
        return sampling["sampler"] if sampling["sampler"] == "ddpm" else f"{sampling['sampler']}-{sampling['steps']}"
    return ", ".join(f"{k}={v}" for k, v in sampling.items())


def quality_summary(quality: dict[str, Any]) -> dict[str, Any]:
    """The scalar distribution metrics of one sample set (see :mod:`genpipe.evaluation.quality`)."""
    out = {k: quality[k] for k in QUALITY_KEYS if isinstance(quality.get(k), (int, float))}
    out["nn_dist_ratio"] = quality["memorisation"]["ratio"]
    out["num_samples"] = quality["num_samples"]
    return out


def family_summary(record: dict[str, Any]) -> dict[str, Any]:
    """``metrics/<family>.json`` from the evaluate stage's full record."""
    out: dict[str, Any] = {}
    if (name := sampler_name(record.get("sampling"))) is not None:
        out["sampler"] = name
    out |= quality_summary(record["quality"])
    if (ll := record.get("likelihood")) is not None:
        out["bits_per_dim"] = ll["bits_per_dim"]
        out["bits_per_dim_is"] = "exact" if ll["kind"] == "exact" else "bound"
    out["images_per_s"] = record["speed"]["images_per_s"]
    out["nfe"] = record["speed"]["nfe"]
    training = record.get("training") or {}
    if training.get("steps") is not None:
        out["train_steps"] = training["steps"]
    if training.get("seconds") is not None:
        out["train_seconds"] = training["seconds"]
    if seeds := record.get("seeds"):
        out["fid_seed_mean"], out["fid_seed_std"] = seeds["fid_mean"], seeds["fid_std"]
    return out
