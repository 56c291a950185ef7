"""Typed, validated configuration: params.yaml loaded once into frozen models.

Resolution order (later wins):

1. the base values in ``params.yaml``;
2. the active profile, ``profiles.<profile>``, deep-merged on top (``quick`` for CPU
   minutes, ``full`` for a GPU);
2b. the active preset, ``presets.<preset>`` if ``preset`` is set: a dataset shape's resolution
   and budgets (``grey28``, ``colour32``), deep-merged on top of the profile;
3. ``-S key.path=value`` overrides, the same syntax as ``dvc exp run -S``. Values are
   parsed as YAML (``-S train.steps=10``, ``-S vae.channels=[16,32]``).

Unknown keys, wrong types and out-of-range values raise :class:`InputError` with one line
naming the file and the key path. Every profile is validated, not only the active one, so
a typo in ``profiles.full`` fails on a laptop rather than on the GPU host.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, create_model, field_validator, model_validator

from genpipe.errors import InputError
from genpipe.models import FAMILIES, Family
from genpipe.sections import SECRET_WORDS, FamilyConfig, Folder, Section, Seed, check_folder

DEFAULT_PARAMS = Path("params.yaml")
INCEPTION_FEATURE_DIM = 2048  # the FID Inception-v3's pool3 width (features.extractor=inception)


class PathsConfig(Section):
    data: Folder = Path("data/prepared")  # Parquet shards + card.json
    models: Folder = Path("models")  # models/<family>/checkpoint.pt
    metrics: Folder = Path("metrics")  # metrics/<family>.json (DVC metrics)
    figures: Folder = Path("figures")  # figures/<family>/: samples, interpolations, traversals
    reports: Folder = Path("reports")  # reports/comparison.md and .html


class ShapesConfig(Section):
    """The ``shapes`` source: procedural colour shapes with known factors (see docs/data.md)."""

    num_images: int = Field(6000, ge=10, le=10_000_000)
    min_scale: float = Field(0.3, gt=0.0, le=1.0)  # a shape's bounding box, as a fraction of the side
    max_scale: float = Field(0.7, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> ShapesConfig:
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale}) must not exceed max_scale ({self.max_scale})")
        return self


class ParquetConfig(Section):
    """The ``parquet`` source: which columns hold the encoded images and the labels."""

    image_column: str = Field("image", min_length=1)  # encoded bytes, or a struct with a ``bytes`` field (Hugging Face)
    label_column: str | None = "label"  # integers or strings; None: unlabelled


class DataConfig(Section):
    # digits: scikit-learn's bundled 8x8 handwritten digits (grey); shapes: procedural colour
    # shapes; mnist: IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST) in the folder data.path;
    # cifar: CIFAR-10/100 python batches in the folder or .tar.gz data.path; imagefolder: image
    # files under data.path (labels from first-level sub-folders); parquet: encoded images in
    # a Parquet file or dataset at data.path
    source: Literal["digits", "shapes", "mnist", "cifar", "imagefolder", "parquet"] = "digits"
    path: str = Field("data/source", min_length=1)  # where a source that reads files finds them: a folder, a file or s3://
    shapes: ShapesConfig = ShapesConfig()
    parquet: ParquetConfig = ParquetConfig()
    resolution: int = Field(16, ge=8, le=256)  # side length of the prepared images, pixels
    # imagefolder, parquet: how encoded images become (C, resolution, resolution) uint8
    channels: Literal["auto", 1, 3] = "auto"  # auto: 3 if any image is colour, else 1
    resize: Literal["center_crop", "resize", "pad"] = "center_crop"  # keep aspect and crop / stretch / keep and pad
    upscale: bool = True  # false: an image smaller than the resolution is a bad file
    background: str = "black"  # what transparent pixels and padding become (a colour name or #rrggbb)
    on_bad_file: Literal["fail", "skip"] = "fail"  # an unreadable image stops prepare, or is left out (in the card)
    workers: int = Field(0, ge=0)  # processes decoding images; 0 = one per CPU core
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)  # share of images held out for validation
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)  # share held out for the final numbers
    shard_rows: int = Field(1024, ge=1)  # rows per Parquet shard

    @field_validator("background")
    @classmethod
    def _a_colour(cls, v: str) -> str:
        from PIL import ImageColor  # deferred: only a config with this key set needs it

        try:
            ImageColor.getrgb(v)
        except ValueError:
            raise ValueError(f"{v!r}: not a colour (a name such as white, or #rrggbb)") from None
        return v

    @field_validator("path")
    @classmethod
    def _folder_file_or_s3(cls, v: str) -> str:
        if "://" in v and not v.startswith("s3://"):
            raise ValueError(f"{v!r}: use a local path or s3://bucket/prefix")
        return v


class TrainConfig(Section):
    runner: Literal["local", "ray"] = "ray"  # in-process loop, or the same loop in Ray Train
    num_workers: int = Field(2, ge=1, le=1024)  # Ray Train workers (DDP ranks)
    use_gpu: bool = False  # one GPU per Ray worker (NCCL); CPU workers use gloo
    device: Literal["auto", "cpu", "cuda"] = "auto"  # local runner only; auto = cuda if present
    # auto: bf16 autocast where the device computes bf16 natively (a GPU from Ampere on; a CPU with AVX512-BF16
    # or AMX), else fp32; each family may set its own
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    steps: int = Field(2000, ge=1)  # optimizer steps in total (each phase of a family)
    batch_size: int = Field(64, ge=1)  # per worker
    warmup_steps: int = Field(100, ge=0)  # linear warm-up, then cosine decay to lr_min_ratio*lr
    lr_min_ratio: float = Field(0.05, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0)  # max global gradient norm per phase
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)  # EMA of the weights, used for sampling
    log_every: int = Field(25, ge=1)  # steps between logged losses
    sample_every: int = Field(500, ge=1)  # steps between sample grids logged to MLflow
    checkpoint_every: int = Field(500, ge=1)  # steps between checkpoints (and one at the end)
    threads: int = Field(0, ge=0)  # torch CPU threads for the local runner; 0 = torch default
    storage_path: str = Field(".ray_results", min_length=1)  # Ray Train run state; s3://... on a cluster
    max_failures: int = Field(0, ge=0)  # Ray Train restarts from the last checkpoint after a worker dies
    # memory: each worker holds the whole train split as one tensor; shards: each worker streams its share of
    # the shards (genpipe.data.stream); auto: shards once the decoded split exceeds memory_limit_mb
    data_path: Literal["auto", "memory", "shards"] = "auto"
    # auto's threshold, MB of decoded uint8 pixels; a fixed number, not a share of free memory, so that the
    # path, and with it every batch, is the same on any machine and on resume
    memory_limit_mb: float = Field(2048.0, ge=0.0)
    shuffle_shards: int = Field(4, ge=1)  # shards path: rows are shuffled across this many shards at a time
    prefetch_shards: int = Field(2, ge=1)  # shards path: decoded shards a background thread reads ahead
    data_uri: str | None = None  # where workers read the prepared dataset: None = paths.data; s3://bucket/prefix

    @field_validator("storage_path")
    @classmethod
    def _local_storage_is_a_folder(cls, v: str) -> str:
        if "://" not in v:  # a URI is Ray's to check
            check_folder(Path(v))
        return v

    @field_validator("data_uri")
    @classmethod
    def _folder_or_s3(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith("s3://"):
            raise ValueError(f"{v!r}: use a folder or s3://bucket/prefix")
        return v


class TrackingConfig(Section):
    experiment: str = Field("genpipe", min_length=1)  # MLflow experiment name
    # The tracking URI is not a param: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here.


class FeaturesConfig(Section):
    """The feature network of every distribution metric (FID, KID, PR, DC, IS, class histogram).

    ``domain``: a small CNN classifier trained on the prepared train split (its own DVC stage);
    ``inception``: Inception-v3 in the FID configuration (plain torch), weights from a local file the user supplies.
    """

    extractor: Literal["domain", "inception"] = "domain"
    inception_weights: Path | None = None  # local pt_inception-2015-12-05 weights (extractor=inception)
    width: int = Field(32, ge=4)  # channels of the classifier's first conv block (doubled per block)
    feature_dim: int = Field(64, ge=2)  # penultimate width: the features' dimension
    steps: int = Field(800, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    augment_shift: int = Field(1, ge=0)  # random translation by up to this many pixels while training


class EvaluateConfig(Section):
    batch_size: int = Field(256, ge=1)  # sampling batch; images/s is timed on these batches
    grid_samples: int = Field(64, ge=1, le=1024)  # the first scored images, shown as the sample grid
    num_samples: int = Field(1000, ge=2)  # generated images per distribution metric (never < feature_dim)
    kid_subsets: int = Field(50, ge=1)
    kid_subset_size: int = Field(500, ge=2)
    pr_k: int = Field(3, ge=1)  # k of improved precision and recall (Kynkaanniemi et al. 2019)
    dc_k: int = Field(5, ge=1)  # k of density and coverage (Naeem et al. 2020)
    # per family with a sampling section: settings scored beside the main one (FID against NFE),
    # each entry overriding <family>.sampling, on sweep_samples images
    sweep: dict[str, tuple[dict[str, Any], ...]] = {}
    sweep_samples: int = Field(500, ge=2)

    @model_validator(mode="after")
    def _grid_within_scored(self) -> EvaluateConfig:
        if self.grid_samples > self.num_samples:
            raise ValueError(f"grid_samples={self.grid_samples} exceeds num_samples={self.num_samples} "
                             "(the grid shows the first scored images)")
        return self


class StorageConfig(Section):
    """S3 settings; each falls back to the standard AWS variable when empty."""

    endpoint_url: str | None = None  # else AWS_ENDPOINT_URL; empty for AWS itself
    region: str | None = None  # else AWS_DEFAULT_REGION, else us-east-1
    access_key_id: SecretStr | None = None  # else AWS_ACCESS_KEY_ID (prefer the environment); never stored
    secret_access_key: SecretStr | None = None  # else AWS_SECRET_ACCESS_KEY; never logged or stored
    connect_timeout: float = Field(5.0, gt=0.0)  # seconds; an unreachable endpoint fails fast (the pre-flight
    # check also waits this long for an answer, once, so an endpoint that never answers fails fast too)
    read_timeout: float = Field(60.0, gt=0.0)  # seconds a request of the job waits for an answer (then retried)

    @field_validator("access_key_id", "secret_access_key", mode="before")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):  # e.g. digits YAML read as a number: say so, never echo it
            raise ValueError("must be a string (quote it)")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials_in_url(cls, v: str | None) -> str | None:
        if v and "@" in v.partition("://")[2].partition("/")[0]:
            raise ValueError("credentials inside the URL are not accepted; use AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (or storage.access_key_id / secret_access_key)")
        return v


class GenerateConfig(Section):
    out: str = Field("generated", min_length=1)  # folder, file:///path or s3://bucket/prefix; jobs go to <out>/<family>
    n: int = Field(64, ge=1)  # images per family and job
    seed: Seed = 0  # image i of a job depends only on (seed, i, batch_size)
    batch_size: int = Field(64, ge=1)
    runner: Literal["local", "ray"] = "local"  # in-process, or Ray Data actors (pays off at scale)
    num_workers: int = Field(2, ge=1)  # Ray Data actors (each holds one model copy)
    use_gpu: bool = False  # one GPU per actor


class PipelineConfig(Section):
    schedule: str = Field("0 3 * * *", min_length=9)  # cron of the scheduled training pipeline
    timezone: str = "UTC"
    task_retries: int = Field(1, ge=0)  # retries of the tasks where a retry can help
    # trainings at a time, started in `families` order (the next when any running one ends);
    # 0 = all at once and Ray queues them in an order of its own. With train.runner=local the
    # flow trains in its own threads (one GIL): one at a time, whatever this says; those threads
    # also share torch's global RNG with the flow's feature network and evaluations, so the
    # pipeline is bit-reproducible with the ray runner (separate processes) only
    concurrent_trainings: int = Field(2, ge=0)
    # torch CPU threads of the flow's own work (feature network, evaluation, generation, report),
    # which runs beside the training workers; 0 = torch's default (all cores)
    threads: int = Field(1, ge=0)
    record_with_dvc: bool = True  # after a run on unmodified params, `dvc commit` what it made


class Config(Section):
    """The whole of params.yaml. Each registered family's section (``vae:``, ...) is a field of
    the subclass :func:`config_type` builds from the registry, so a family added to
    :data:`genpipe.models.FAMILIES` brings its section with it."""

    profile: str = "quick"  # name of the entry in `profiles` to apply
    preset: str | None = None  # name of the entry in `presets` (a dataset shape's budgets), applied after the profile
    seed: Seed = 0
    # extra training seeds: each family is also trained with each of these (models/<family>/seeds/<s>/),
    # and the report gives the spread of FID over `seed` and these (training stability)
    stability_seeds: tuple[Seed, ...] = ()
    # trained by the pipeline; default: the first registered family
    families: tuple[str, ...] = Field(default_factory=lambda: tuple(FAMILIES)[:1], min_length=1)
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    features: FeaturesConfig = FeaturesConfig()
    generate: GenerateConfig = GenerateConfig()
    storage: StorageConfig = StorageConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @field_validator("stability_seeds")
    @classmethod
    def _distinct_seeds(cls, v: tuple[int, ...], info) -> tuple[int, ...]:
        seeds = (info.data.get("seed", 0), *v)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"must be distinct and differ from seed ({seeds[0]})")
        return v

    @field_validator("families")
    @classmethod
    def _registered(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if unknown := [f for f in v if f not in FAMILIES]:
            raise ValueError(f"unknown family {unknown[0]!r} (known: {', '.join(FAMILIES)})")
        return v

    def __reduce__(self):  # pickles by value: the class is built at run time from the registry
        return validate_config, (self.model_dump(),)

    def family(self, name: str) -> FamilyConfig:
        """The typed section of one family, e.g. ``cfg.family("vae")``."""
        section = getattr(self, name, None) if name in FAMILIES else None
        if not isinstance(section, FamilyConfig):
            raise InputError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
        return section

    def train_for(self, name: str) -> TrainConfig:
        """``train`` with the family's own ``steps`` / ``batch_size`` / ``precision`` where it sets them."""
        fam = self.family(name)
        own = {k: getattr(fam, k) for k in ("steps", "batch_size", "precision") if getattr(fam, k) is not None}
        return self.train.model_copy(update=own)

    def sweep_settings(self, name: str) -> list[Section]:
        """``evaluate.sweep.<name>`` as the family's ``sampling`` settings (each entry overrides
        it), each checked against the family's section (e.g. steps <= timesteps); an
        :class:`InputError` names the entry. Checked when params load, used by evaluation."""
        entries = self.evaluate.sweep.get(name, ())
        if not entries:
            return []
        fam, key = self.family(name), f"evaluate.sweep.{name}"
        base = getattr(fam, "sampling", None)
        if base is None:
            raise InputError(f"{key}: the {name} family has no sampling settings to sweep")
        out = []
        for i, entry in enumerate(entries):
            try:
                options = type(base).model_validate(base.model_dump() | dict(entry))
                type(fam).model_validate(fam.model_dump() | {"sampling": options.model_dump()})
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise InputError(f"{key}[{i}]: {where + ': ' if where else ''}{first['msg']}") from None
            out.append(options)
        return out

    def feature_dim(self) -> int:
        """The dimension of the features every distribution metric compares."""
        return INCEPTION_FEATURE_DIM if self.features.extractor == "inception" else self.features.feature_dim

    def check_sample_counts(self) -> None:
        """Sample counts the metrics cannot work with, found when params load instead of after
        training: FID needs at least as many samples as feature dimensions, the k-NN metrics
        more samples than k. An :class:`InputError` names the key."""
        e, dim = self.evaluate, self.feature_dim()
        counts = [("evaluate.num_samples", e.num_samples)]
        if any(e.sweep.values()):  # scored whenever a swept family is evaluated
            counts.append(("evaluate.sweep_samples", e.sweep_samples))
        for key, n in counts:
            if n < dim:
                source = "Inception's pool3" if self.features.extractor == "inception" else "features.feature_dim"
                raise InputError(f"{key}: {n} is fewer than the {dim} feature dimensions ({source}); FID needs at least {dim}")
            for k_key, k in (("evaluate.pr_k", e.pr_k), ("evaluate.dc_k", e.dc_k)):
                if k >= n:
                    raise InputError(f"{k_key}: k={k} needs fewer than the {n} samples of {key}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready resolved config (what is saved beside checkpoints and logged)."""
        return self.model_dump(mode="json")

    def digest(self, *sections: str) -> str:
        """sha256 of the named sections (all if none), to tell whether a config changed."""
        data = self.to_dict()
        if sections:
            data = {k: data[k] for k in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@functools.cache
def _config_type(families: tuple[tuple[str, Family], ...]) -> type[Config]:
    fields = {name: (spec.config_type, Field(default_factory=spec.config_type)) for name, spec in families}
    return create_model("Config", __base__=Config, __module__=__name__, **fields)


def config_type() -> type[Config]:
    """:class:`Config` with a field per registered family (rebuilt when the registry grows)."""
    return _config_type(tuple(FAMILIES.items()))


def validate_config(tree: dict[str, Any]) -> Config:
    """A resolved params tree (e.g. the ``config`` saved in a checkpoint) as a :class:`Config`."""
    return config_type().model_validate(tree)


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"vae.lr=0.1"`` -> ``(["vae", "lr"], 0.1)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise InputError(f"-S {text}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return [p.strip() for p in parts], parsed


def _set_path(tree: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"{origin}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _may_hold_a_secret(key: str, value: Any) -> bool:
    """A key named like a credential, or a value with a URL's user:password part."""
    text = str(value)
    return any(w in key.lower() for w in SECRET_WORDS) or ("://" in text and "@" in text)


def _validate(tree: dict[str, Any], where: str, prefix: str = "") -> Config:
    try:
        cfg = validate_config(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = prefix + ".".join(str(p) for p in err["loc"])
        # a section's own check (model_validator) names its keys: no dump of the whole section
        got = "" if err["type"] == "extra_forbidden" or isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
        if _may_hold_a_secret(key, err.get("input")):  # a secret's value never reaches an error line
            got = ""
        more = f" [+{exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "extra_forbidden" and len(loc) == 2 and loc[0] == "evaluate" and loc[1].endswith("_sweep"):
            got = f" (now evaluate.sweep.{loc[1].removesuffix('_sweep')})"  # the key before sweeps were per family
        raise InputError(f"{where}: {key}: {err['msg']}{got}{more}") from None
    try:
        for name in cfg.evaluate.sweep:  # entries that span two sections: fail now, not after training
            if name not in FAMILIES:
                raise InputError(f"evaluate.sweep.{name}: unknown family (known: {', '.join(FAMILIES)})")
            cfg.sweep_settings(name)
        cfg.check_sample_counts()
    except InputError as exc:
        raise InputError(f"{where}: {prefix}{exc}") from None
    return cfg


def resolve(raw: dict[str, Any], overrides: list[str] = (), where: str = "params.yaml") -> Config:
    """Resolve a raw params tree (+ profile + overrides) into a validated :class:`Config`."""
    parsed = [(parse_override(o), o) for o in overrides]
    tree = copy.deepcopy(raw)
    for (parts, value), text in parsed:
        _set_path(tree, parts, value, f"{where}: -S {text}")
    profiles = tree.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise InputError(f"{where}: profiles: expected a mapping of profile name to settings")
    name = tree.get("profile", Config.model_fields["profile"].default)
    if name not in profiles:
        raise InputError(f"{where}: profile: unknown profile {name!r} (defined: {', '.join(profiles) or 'none'})")
    presets = tree.pop("presets", None) or {}
    if not isinstance(presets, dict) or not all(isinstance(p, dict) for p in presets.values()):
        raise InputError(f"{where}: presets: expected a mapping of preset name to settings")
    preset = tree.get("preset")
    if preset is not None and preset not in presets:
        raise InputError(f"{where}: preset: unknown preset {preset!r} (defined: {', '.join(presets) or 'none'})")
    _validate(tree, where)  # the base alone first, so its errors are not blamed on a profile
    for other, settings in profiles.items():  # every profile must be valid, not only the active one
        _validate(_deep_merge(tree, settings), where, prefix=f"profiles.{other}.")
    tree = _deep_merge(tree, profiles[name])
    for other, settings in presets.items():  # and every preset on the active profile
        _validate(_deep_merge(tree, settings), where, prefix=f"presets.{other}.")
    if preset is not None:
        tree = _deep_merge(tree, presets[preset])
    for (parts, value), text in parsed:  # -S beats the profile and the preset
        if parts[0] not in ("profiles", "presets"):
            _set_path(tree, parts, value, f"{where}: -S {text}")
    return _validate(tree, where)


def load_config(path: Path | str = DEFAULT_PARAMS, overrides: list[str] = ()) -> Config:
    """Read ``params.yaml``, apply its profile and ``-S`` overrides, validate once."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such params file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a params file") from None
    except PermissionError:
        raise InputError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}:{line} is not valid YAML") from None
    if raw is None:
        raise InputError(f"{path}: empty; expected the params mapping (see params.yaml)")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return resolve(raw, overrides, where=str(path))
