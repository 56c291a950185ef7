"""MLflow tracking through ``MlflowClient`` with explicit run ids (no global active run).

Explicit ids let rank 0 of a Ray Train job log into the run the driver created, and let
a nested run name its parent. The default store is the sqlite file ``mlflow.db`` in the
project folder (``mlflow ui`` reads it with no server); ``MLFLOW_TRACKING_URI`` points
elsewhere. Artifacts of a local store go to ``mlartifacts/`` beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.rest_utils import http_request

from genpipe.errors import InputError, without_userinfo
from genpipe.images import make_grid
from genpipe.results import EvaluationResult
from genpipe.sections import SECRET_WORDS

MAX_PARAM_LEN = 500  # MLflow's limit on a param value
# the experiment's type in MLflow 3's UI (its selector shows it); the UI still starts in GenAI mode
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db`` (absolute: Ray workers may chdir)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def client(uri: str | None = None) -> MlflowClient:
    """A client of the tracking store at ``uri`` (default :func:`tracking_uri`), checked first."""
    uri = uri or tracking_uri()
    check_store(uri)
    return MlflowClient(tracking_uri=uri)


PROBE_TIMEOUT_S = 10.0  # at most; less where MLFLOW_HTTP_REQUEST_TIMEOUT says less
_usable: set[str] = set()  # the stores this process has checked
_usable_lock = threading.Lock()


def check_store(uri: str) -> None:
    """Fail fast, in one line, when the tracking store at ``uri`` cannot be used: an HTTP server
    that does not answer one request (no retries: MLflow's client retries for about 4 minutes,
    which stays the rule once a stage has started) or refuses the credentials; a sqlite file
    whose folder is missing or that is a folder. Once per process and URI."""
    if uri in _usable:
        return
    shown = f"MLFLOW_TRACKING_URI {without_userinfo(uri)}"
    scheme = uri.partition(":")[0].lower()
    if scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if path is not None and path.is_dir():
            raise InputError(f"{shown}: {path} is a folder, not a database file")
        if path is not None and not path.parent.is_dir():
            raise InputError(f"{shown}: the folder {path.parent} does not exist")
    elif scheme in ("http", "https"):
        _probe_server(uri, shown)
    with _usable_lock:
        _usable.add(uri)


def _probe_server(uri: str, shown: str) -> None:
    timeout = min(PROBE_TIMEOUT_S, float(MLFLOW_HTTP_REQUEST_TIMEOUT.get()))
    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                                params={"max_results": 1}, max_retries=0, backoff_factor=0, timeout=timeout,
                                raise_on_status=False)
    except MlflowException as exc:  # no answer: refused, unknown host, timed out
        reason = "did not answer within {:g} s".format(timeout) if "timed out" in str(exc).lower() else "cannot be reached"
        raise InputError(f"{shown}: the tracking server {reason}") from None
    if response.status_code in (401, 403):
        raise InputError(f"{shown}: the tracking server refused the credentials (HTTP {response.status_code}; "
                         "MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)")
    if response.status_code != 200:
        raise InputError(f"{shown}: the tracking server answered HTTP {response.status_code} "
                         "(is it an MLflow tracking server?)")


def git_commit(cwd: Path | str = ".") -> str:
    """HEAD's sha, suffixed ``-dirty`` when tracked files have changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.steps": "2000", ...}``; anything that looks secret is dropped,
    and so are unset (None) values: a param says what ran, not what was left to a default."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if value is None or any(word in name.lower() for word in SECRET_WORDS):
            continue
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


def _experiment_id(c: MlflowClient, name: str, uri: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND[0] not in exp.tags:  # made by an older genpipe: the UI would guess its kind
            c.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # local store: keep artifacts beside the db, absolute
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=artifact_location, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


def start_run(
    experiment: str,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    parent_run_id: str | None = None,
    uri: str | None = None,
) -> str:
    """Create a run (nested under ``parent_run_id`` if given) with params and tags; its id."""
    uri = uri or tracking_uri()
    c = client(uri)
    all_tags = {MLFLOW_RUN_NAME: run_name, **tags}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = c.create_run(_experiment_id(c, experiment, uri), run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        c.log_batch(run_id, params=items[i : i + 100])
    return run_id


def log_params(run_id: str, params: dict[str, str], uri: str | None = None) -> None:
    """Add params to a run, leaving those it already has (a resumed run logs them again)."""
    c = client(uri)
    have = c.get_run(run_id).data.params
    items = [Param(k, v) for k, v in params.items() if k not in have]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        c.log_batch(run_id, params=items[i : i + 100])


def log_dataset(run_id: str, card: dict[str, Any], path: Path | str, context: str = "train",
                uri: str | None = None) -> None:
    """The prepared dataset as the run's MLflow dataset input, named by its source and shape,
    with its sha256 (digest: the first 16 hex digits; profile: all of it, counts, shape)."""
    shape = "x".join(str(d) for d in card["shape"])
    profile = {"sha256": card["sha256"], "shape": card["shape"], "counts": card["counts"],
               "num_classes": card["num_classes"]}
    dataset = Dataset(name=f"{card['source']}-{shape}", digest=card["sha256"][:16], source_type="local",
                      source=Path(path).resolve().as_uri(), profile=json.dumps(profile))
    inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
    try:
        client(uri).log_inputs(run_id, inputs)
    except MlflowException:
        # the store creates an experiment's dataset row on first use, not atomically: runs that
        # start together (the pipeline's families) can collide on it; by now it exists
        time.sleep(0.5)
        client(uri).log_inputs(run_id, inputs)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0, uri: str | None = None) -> None:
    MlflowTrainLogger(run_id, uri or tracking_uri()).log_metrics(step, metrics)


def set_tags(run_id: str, tags: dict[str, str], uri: str | None = None) -> None:
    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifact(run_id: str, path: Path | str, artifact_path: str | None = None, uri: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_path)


def end_run(run_id: str, ok: bool, uri: str | None = None) -> None:
    status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
    client(uri).set_terminated(run_id, status=status)


class MlflowTrainLogger:
    """The training loop's logger: losses per step and sample grids (image series ``samples``).

    ``after_step``: a resumed run's steps up to this one are in the run already (logged before the
    interruption, between its last checkpoint and the kill) and are not logged twice; a resumed
    run recomputes them bit-identically."""

    def __init__(self, run_id: str, uri: str, after_step: int | None = None):
        self.run_id, self.uri, self.after_step = run_id, uri, after_step
        self._client = client(uri)

    def _logged(self, step: int) -> bool:
        return self.after_step is not None and step <= self.after_step

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self._logged(step):
            return
        ts = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def log_samples(self, step: int, images: torch.Tensor) -> None:
        if not self._logged(step):
            self._client.log_image(self.run_id, make_grid(images), key="samples", step=step)


def last_logged_step(run_id: str, uri: str | None = None) -> int:
    """The highest step of any metric of ``run_id`` (0 for none): where a resumed run's logging goes on."""
    c = client(uri)
    keys = c.get_run(run_id).data.metrics
    return max((m.step for key in keys for m in c.get_metric_history(run_id, key)), default=0)


def start_pipeline_run(cfg, card: dict[str, Any]) -> str:
    """The parent run of one pipeline run, with the prepared dataset (``card``) as its input;
    family runs nest under it."""
    params = flatten_params({k: v for k, v in cfg.to_dict().items() if k not in cfg.families})
    tags = {"genpipe.kind": "pipeline", "genpipe.git_commit": git_commit(), "genpipe.families": ",".join(cfg.families),
            "genpipe.dataset_sha256": card["sha256"]}
    run_id = start_run(cfg.tracking.experiment, f"pipeline-{card['source']}", params, tags)
    try:
        log_dataset(run_id, card, cfg.paths.data)
    except Exception:
        end_run(run_id, ok=False)
        raise
    return run_id


def finish_pipeline_run(run_id: str, results: dict[str, EvaluationResult], ok: bool,
                        report_files: list[str] | None = None) -> None:
    """Log each family's headline numbers (and the comparison report) on the parent run, then close it."""
    flat: dict[str, float] = {}
    for family, r in results.items():
        if r.likelihood is not None:
            flat[f"{family}.test_bits_per_dim"] = r.likelihood.bits_per_dim
        flat |= {f"{family}.{key}": value for key, value in r.quality.summary().items()}
        flat[f"{family}.images_per_s"] = r.speed.images_per_s
    if flat:
        log_metrics(run_id, flat)
    for path in report_files or []:
        log_artifact(run_id, path, "report")
    end_run(run_id, ok)
