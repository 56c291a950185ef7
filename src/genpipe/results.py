"""What the evaluate stage measures, as typed records: :class:`EvaluationResult` and its parts.

The evaluate stage builds one per family and writes it as ``metrics/<family>.provenance.json``
(:meth:`EvaluationResult.record`) and its flat summary as ``metrics/<family>.json``
(:meth:`EvaluationResult.summary`, the DVC metrics); the report, tracking, the CLI and the flow
read these fields instead of string keys. Records keep keys they do not declare (``extra``), so
a richer record still loads. Plain data: nothing here imports a family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from genpipe.errors import InputError

QUALITY_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "inception_score",
                "classes_covered", "class_kl", "sharpness_ratio")


class Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Quality(Record):
    """The distribution metrics of one sample set (:func:`genpipe.evaluation.quality.sample_quality`)."""

    extractor_id: str
    num_samples: int
    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    density: float
    coverage: float
    sharpness_ratio: float
    memorisation: dict[str, Any]
    inception_score: float | None = None
    inception_score_std: float | None = None
    classes_covered: int | None = None
    class_kl: float | None = None
    class_fractions: list[float] | None = None
    seed: int | None = None  # the sampling seed (None for the real images)
    generation_seconds: float | None = None

    def summary(self) -> dict[str, Any]:
        """The scalar figures under the keys of ``metrics/<family>.json``."""
        out = {k: getattr(self, k) for k in QUALITY_KEYS if isinstance(getattr(self, k), (int, float))}
        out["nn_dist_ratio"] = self.memorisation["ratio"]
        out["num_samples"] = self.num_samples
        return out


class Likelihood(Record):
    nll_nats: float  # mean -log p(x) per image
    bits_per_dim: float
    kind: Literal["exact", "lower_bound"]
    estimator: str


class Speed(Record):
    images_per_s: float
    batch_size: int
    timed_batches: int
    warm_up_excluded: bool
    nfe: int
    device: str
    threads: int


class Training(Record):
    steps: int
    seconds: float | None = None
    world_size: int | None = None
    precision: str | None = None


class SeedSpread(Record):
    """FID of the models trained with ``seed`` and each of ``stability_seeds``."""

    training_seeds: list[int]
    fid: list[float]
    fid_mean: float
    fid_std: float
    num_samples: int
    sampling_seed: int
    extractor_id: str
    checkpoint_sha256: list[str]


class SweepRow(Record):
    """One sampling setting of ``evaluate.sweep.<family>``, scored on ``sweep_samples`` images."""

    sampler: str  # the setting's series in the FID-vs-NFE plot (``ddim``)
    setting: str  # the setting's label (``ddim-10``)
    nfe: int
    num_samples: int
    seed: int
    fid: float
    kid: float
    precision: float
    recall: float
    images_per_s: float
    extractor_id: str
    sampling: dict[str, Any]


class EvaluationResult(Record):
    """Every number of one family's evaluation and what produced it."""

    family: str
    split: str
    num_images: int
    likelihood: Likelihood | None
    samples_png: str
    sampling: dict[str, Any] | None  # the family's sampling options, or None
    sampler: str | None = None  # those options' label (``ddim-50``, ``temperature=0.7``)
    seed: int
    dataset_sha256: str
    checkpoint_sha256: str
    checkpoint_step: int
    mlflow_run_id: str | None
    figures: list[str]
    extractor: dict[str, Any]  # the feature extractor's card
    quality: Quality
    speed: Speed
    training: Training
    seeds: SeedSpread | None = None
    sweep: list[SweepRow] | None = None
    seconds: float | None = None

    def record(self) -> dict[str, Any]:
        """The JSON of ``metrics/<family>.provenance.json``."""
        out = self.model_dump(mode="json")
        out["quality"] = self.quality.model_dump(mode="json", exclude_none=True)
        return {k: v for k, v in out.items() if not (k in ("seeds", "sweep", "seconds") and v is None)}

    def summary(self) -> dict[str, Any]:
        """``metrics/<family>.json``: the figures a person compares, the same keys for every family."""
        out: dict[str, Any] = {}
        if (name := self.sampler) is not None:
            out["sampler"] = name
        out |= self.quality.summary()
        if self.likelihood is not None:
            out["bits_per_dim"] = self.likelihood.bits_per_dim
            out["bits_per_dim_is"] = "exact" if self.likelihood.kind == "exact" else "bound"
        out["images_per_s"] = self.speed.images_per_s
        out["nfe"] = self.speed.nfe
        if self.training.steps is not None:
            out["train_steps"] = self.training.steps
        if self.training.seconds is not None:
            out["train_seconds"] = self.training.seconds
        if self.seeds is not None:
            out["fid_seed_mean"], out["fid_seed_std"] = self.seeds.fid_mean, self.seeds.fid_std
        return out

    def scalars(self) -> dict[str, float]:
        """The figures logged to the family's MLflow run."""
        out = {f"eval/{k}": v for k, v in self.quality.model_dump().items() if isinstance(v, (int, float))
               and not isinstance(v, bool)}
        out |= {"eval/images_per_s": self.speed.images_per_s, "eval/nfe": self.speed.nfe}
        if self.seeds is not None:
            out |= {"eval/fid_seed_mean": self.seeds.fid_mean, "eval/fid_seed_std": self.seeds.fid_std}
        if self.likelihood is not None:
            out |= {"test_nll_nats": self.likelihood.nll_nats, "test_bits_per_dim": self.likelihood.bits_per_dim}
        return out

    @classmethod
    def read(cls, path: Path | str) -> EvaluationResult:
        """A provenance file written by the evaluate stage; an :class:`InputError` if it is not one."""
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:  # JSON or validation: one line naming the file
            family = path.name.split(".")[0]
            raise InputError(f"{path}: not an evaluation record of this genpipe ({type(exc).__name__}); "
                             f"run `genpipe evaluate --family {family}` again") from None
