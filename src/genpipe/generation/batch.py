"""Batch generation: a trained family -> N PNG images + one Parquet manifest in an object store.

Layout under the output URI (a folder or ``s3://bucket/prefix``)::

    images/<job_id>/<index:06d>.png
    manifests/<job_id>.parquet        one row per image (MANIFEST_SCHEMA)

``job_id`` is a hash of what determines the images (family, checkpoint sha256, seed, n,
batch size, labels), so re-running a job rewrites the same keys and the same manifest:
no row is duplicated, and other jobs' manifests are never touched. The manifest is written
last, after every image is stored, so each row names an object that exists with the
recorded sha256. Read all jobs at once with ``pyarrow.dataset.dataset(<out>/manifests)``.

Batches run in-process or on Ray Data actors (``generate.runner``); both use
:class:`BatchGenerator`, one model copy per actor.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import tempfile
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genpipe import tracking
from genpipe.artifacts import FINAL, load_checkpoint, load_model, trained_checkpoint, trained_config
from genpipe.config import Config, StorageConfig
from genpipe.data import read_card
from genpipe.errors import InputError
from genpipe.images import encode_png, to_uint8
from genpipe.models import sampling_options
from genpipe.runtime import ensure_ray, progress_bar, reuse_freed_memory
from genpipe.sections import MAX_SEED
from genpipe.storage import sha256_file
from genpipe.storage.objectstore import StoreFailed, open_store, safe_key

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_uri", pa.string()),
        ("family", pa.string()),
        ("run_id", pa.string()),
        ("checkpoint_sha256", pa.string()),
        ("seed", pa.int64()),
        ("index", pa.int64()),
        ("label", pa.int16()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_sha256", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("job_id", pa.string()),
        ("sampling", pa.string()),  # JSON of the family's sampling options (sampler, steps, ...), or null
    ]
)


@dataclass(frozen=True)
class GenerationJob:
    family: str
    run_id: str | None
    checkpoint_sha256: str
    seed: int
    n: int
    batch_size: int
    labels: tuple[int, ...] | None  # one per image, or None (unconditional)
    sampling: str | None = None  # JSON of the sampling options in force (they change the images)

    @property
    def job_id(self) -> str:
        what = {k: v for k, v in asdict(self).items() if k != "run_id"}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.family}-{digest}"

    @property
    def num_batches(self) -> int:
        return -(-self.n // self.batch_size)


@dataclass(frozen=True)
class GenerationResult:
    job_id: str
    out: str
    manifest_uri: str
    num_images: int
    seconds: float


def parse_labels(spec: str | None, n: int, num_classes: int) -> tuple[int, ...] | None:
    """``None`` -> unconditional; ``"7"`` -> all 7; ``"1,2"`` -> cycle; ``"balanced"`` -> i mod K."""
    if spec is None or spec == "":
        return None
    if spec == "balanced":
        return tuple(i % num_classes for i in range(n))
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        raise InputError(f"--labels {spec}: expected 'balanced' or comma-separated class indices") from None
    if bad := [v for v in values if not 0 <= v < num_classes]:
        raise InputError(f"--labels {spec}: class {bad[0]} is outside 0..{num_classes - 1}")
    return tuple(values[i % len(values)] for i in range(n))


class BatchGenerator:
    """Generates and stores whole batches of a job; a Ray Data actor or a plain callable.

    ``__call__`` takes ``{"batch": array of batch indices}`` and returns manifest columns.
    """

    def __init__(self, checkpoint: str, shape: tuple[int, int, int], num_classes: int,
                 out: str, storage: StorageConfig, job: GenerationJob, options: Any = None, device: str = "cpu"):
        reuse_freed_memory()  # a Ray Data actor is a process of its own
        self.model, _ = load_model(checkpoint, shape, num_classes, device)
        self.options = options
        self.store = open_store(out, storage)
        self.job = job
        self.pool = ThreadPoolExecutor(max_workers=8)  # uploads overlap; S3 latency dominates

    def generate(self, b: int) -> list[dict[str, Any]]:
        job = self.job
        start, stop = b * job.batch_size, min(job.n, (b + 1) * job.batch_size)
        labels = torch.tensor(job.labels[start:stop]) if job.labels is not None else None
        gen = torch.Generator().manual_seed(job.seed * 1_000_003 + b)  # batch b depends on (seed, b) only
        with torch.no_grad():
            images = self.model.sample(stop - start, labels=labels, generator=gen, options=self.options)
            images = to_uint8(images.float().cpu()).numpy()
        pngs = [encode_png(img) for img in images]
        keys = [safe_key("images", job.job_id, f"{i:06d}.png") for i in range(start, stop)]
        uris = list(self.pool.map(lambda kv: self.store.put_bytes(kv[0], kv[1], "image/png"), zip(keys, pngs)))
        now = int(time.time() * 1_000_000)
        return [
            {
                "image_uri": uri,
                "family": job.family,
                "run_id": job.run_id,
                "checkpoint_sha256": job.checkpoint_sha256,
                "seed": job.seed,
                "index": start + j,
                "label": None if job.labels is None else job.labels[start + j],
                "width": int(images.shape[-1]),
                "height": int(images.shape[-2]),
                "image_sha256": hashlib.sha256(png).hexdigest(),
                "created_at": now,
                "job_id": job.job_id,
                "sampling": job.sampling,
            }
            for j, (uri, png) in enumerate(zip(uris, pngs))
        ]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [row for b in batch["batch"] for row in self.generate(int(b))]
        return {name: [r[name] for r in rows] for name in MANIFEST_SCHEMA.names}


def manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    rows = sorted(rows, key=lambda r: r["index"])
    columns = {name: [r[name] for r in rows] for name in MANIFEST_SCHEMA.names}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def _run_local(kwargs: dict[str, Any], job: GenerationJob) -> list[dict[str, Any]]:
    gen = BatchGenerator(**kwargs)
    rows: list[dict[str, Any]] = []
    with progress_bar(job.n, f"generate {job.family}", "image") as bar:
        for b in range(job.num_batches):
            rows += gen.generate(b)
            bar.update(min(job.batch_size, job.n - b * job.batch_size))
    return rows


def _run_ray(kwargs: dict[str, Any], job: GenerationJob, num_workers: int, use_gpu: bool) -> list[dict[str, Any]]:
    import ray.data  # deferred: only this runner needs Ray, and importing it costs seconds

    ensure_ray()
    # an actor's own exception, not Ray Data's UserCodeException, whose cause does not survive
    # the trip to this process: a StoreFailed there stays one here (and its line with it)
    ray.data.DataContext.get_current().raise_original_map_exception = True
    # named actors: Ray Data leaves a failed job's actors to reference counting, and references
    # to them outlive the failure (they would hold their CPUs, and a retry here would wait for them)
    prefix, made = f"genpipe-generate-{job.job_id}-{uuid.uuid4().hex[:8]}-", itertools.count()
    ds = ray.data.from_items([{"batch": b} for b in range(job.num_batches)], override_num_blocks=job.num_batches)
    with warnings.catch_warnings():  # deprecated for Ray 2.64 with no replacement named (Ray is pinned)
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn", category=DeprecationWarning)
        ds = ds.map_batches(
            BatchGenerator,
            fn_constructor_kwargs={**kwargs, "device": "cuda" if use_gpu else "cpu"},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(num_workers, job.num_batches)),
            num_gpus=1 if use_gpu else 0,
            num_cpus=0 if use_gpu else 1,
            ray_remote_args_fn=lambda: {"name": f"{prefix}{next(made)}"},
        )
    try:
        return ds.take_all()
    except Exception as exc:
        for name in ray.util.list_named_actors():
            if name.startswith(prefix):
                with contextlib.suppress(ValueError):  # already gone
                    ray.kill(ray.get_actor(name))
        failure = _input_error_in(exc)
        if failure is None:
            raise
        raise failure from None


def _input_error_in(exc: BaseException) -> InputError | None:
    """The InputError inside what Ray raised for a failed actor, with its own type (a StoreFailed
    stays one) and its one line (Ray Data appends its retry advice to the message); or None."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(inner := getattr(cause, "cause", None), BaseException):  # a RayTaskError's own error
            cause = inner
        elif isinstance(cause, InputError):
            return type(cause)(str(cause).split("\n", 1)[0])
        else:
            cause = cause.__cause__
    return None


def resolve_checkpoint(cfg: Config, family: str | None, run_id: str | None, workdir: Path) -> tuple[Path, str]:
    """The checkpoint to generate from: an MLflow run's ``checkpoint`` artifact, or
    ``models/<family>/checkpoint.pt``. Returns (path, family)."""
    if run_id:
        try:
            path = Path(tracking.client().download_artifacts(run_id, f"checkpoint/{FINAL}", str(workdir)))
        except Exception as exc:
            raise InputError(f"--run-id {run_id}: no checkpoint artifact in that MLflow run ({type(exc).__name__})") from None
        found = load_checkpoint(path)["family"]
        if family and family != found:
            raise InputError(f"--family {family}: MLflow run {run_id} trained {found!r}")
        return path, found
    if not family:
        raise InputError("--family or --run-id: say which model to generate from")
    return trained_checkpoint(cfg.paths.models, family), family


def generate_images(
    cfg: Config,
    family: str | None = None,
    *,
    run_id: str | None = None,  # generate from this MLflow run's checkpoint instead
    n: int | None = None,  # default generate.n
    out: str | None = None,  # default <generate.out>/<family>
    seed: int | None = None,  # default generate.seed
    labels: str | None = None,  # None, "7", "1,2,3" or "balanced"
) -> GenerationResult:
    """Generate ``n`` images into ``out``; every input is checked before the first image."""
    gc = cfg.generate
    n, seed = gc.n if n is None else n, gc.seed if seed is None else seed
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # 0 is refused, never the default
        raise InputError(f"--n {n}: must be an integer of at least 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed {seed}: must be an integer in 0..{MAX_SEED}")
    with tempfile.TemporaryDirectory(prefix="genpipe-ckpt-") as workdir:
        ckpt, family = resolve_checkpoint(cfg, family, run_id, Path(workdir))
        out = out or f"{gc.out.rstrip('/')}/{family}"
        card = read_card(cfg.paths.data)
        label_list = parse_labels(labels, n, card["num_classes"])
        state = load_checkpoint(ckpt)
        conditional = trained_config(ckpt, state).family(family).conditional
        if label_list is not None and not conditional:
            raise InputError(f"--labels {labels}: the {family} model in {ckpt.name} is unconditional")
        store = open_store(out, cfg.storage)
        store.check()  # bucket, credentials, endpoint: fail before any image is generated

        options = sampling_options(cfg, family)
        sampling = json.dumps(options.model_dump(mode="json"), sort_keys=True) if options is not None else None
        job = GenerationJob(family, state["meta"].get("mlflow_run_id"), sha256_file(ckpt), seed, n, gc.batch_size,
                            label_list, sampling)
        kwargs = dict(checkpoint=str(ckpt.resolve()), shape=tuple(card["shape"]), num_classes=card["num_classes"],
                      out=out, storage=cfg.storage, job=job, options=options)
        t0 = time.perf_counter()
        try:
            rows = _run_local(kwargs, job) if gc.runner == "local" else _run_ray(kwargs, job, gc.num_workers, gc.use_gpu)
            buf = io.BytesIO()
            pq.write_table(manifest_table(rows), buf, compression="zstd")
            manifest_uri = store.put_bytes(safe_key("manifests", f"{job.job_id}.parquet"), buf.getvalue())
        except StoreFailed as exc:
            raise StoreFailed(f"{exc}; the images stored so far stay and no manifest was written: run the same "
                              "job again to complete it (it rewrites the same keys)") from None
    return GenerationResult(job.job_id, store.uri, manifest_uri, len(rows), time.perf_counter() - t0)
