"""The Prefect flows end to end on real parts: Prefect's local API, a local Ray cluster,
MLflow on a temp sqlite file and an S3 endpoint on 127.0.0.1 (moto's server)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from flows.deployments import GENERATION, PIPELINE, build_deployments
from flows.generate import batch_generation
from flows.pipeline import pipeline
from genpipe.config import load_config
from genpipe.artifacts import load_trained
from tests.conftest import TINY, write_params

pytestmark = pytest.mark.ray


def _task_runs(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=100,
        )
    return {r.name: r.state.type.value for r in runs}


def _task_times(flow_run_id) -> dict[str, tuple]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
    return {r.name: (r.start_time, r.end_time) for r in runs}


def test_pipeline_flow_end_to_end(project, prefect_api, ray_cluster, bucket, mlflow_uri):
    tree = {**TINY, "train": {**TINY["train"], "runner": "ray", "num_workers": 2},
            "generate": {"out": f"s3://{bucket}/e2e", "n": 24, "batch_size": 16},
            "stability_seeds": [1], "pipeline": {"concurrent_trainings": 1}}
    write_params(project, tree)
    state = pipeline(params="params.yaml", return_state=True)
    assert state.is_completed(), state
    result = state.result()

    # Prefect recorded the flow run and every task run, completed
    runs = _task_runs(state.state_details.flow_run_id)
    assert {"prepare", "start-pipeline-run", "train-vae-seed0", "train-vae-seed1", "evaluate-vae", "generate-vae",
            "finish-pipeline-run", "report"} <= set(runs)
    assert set(runs.values()) == {"COMPLETED"}
    # one training at a time (concurrent_trainings: 1): the replicate starts after the model ends,
    # and the evaluation, which scores both, after the replicate
    times = _task_times(state.state_details.flow_run_id)
    assert times["train-vae-seed1"][0] >= times["train-vae-seed0"][1]
    assert times["evaluate-vae"][0] >= times["train-vae-seed1"][1]
    record = json.loads((load_config("params.yaml").paths.metrics / "vae.provenance.json").read_text())
    assert record["seeds"]["training_seeds"] == [0, 1] and len(record["seeds"]["fid"]) == 2
    summary = json.loads((load_config("params.yaml").paths.metrics / "vae.json").read_text())
    assert summary["fid_seed_mean"] == pytest.approx(record["seeds"]["fid_mean"])
    assert result["dvc_recorded"] == []  # a flow run with a temp project: not a DVC repo

    # the checkpoint loads and samples
    model, ckpt = load_trained(load_config("params.yaml"), "vae")
    assert ckpt["meta"]["world_size"] == 2
    assert torch.isfinite(model.sample(4, generator=torch.Generator().manual_seed(0))).all()

    # the manifest has N rows, and every image_uri exists with the recorded sha256
    gen = result["generated"]["vae"]
    assert gen["num_images"] == 24 and gen["out"] == f"s3://{bucket}/e2e/vae"
    s3 = boto3.client("s3")
    parsed = urlparse(gen["manifest_uri"])
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()))
    assert table.num_rows == 24
    for row in table.to_pylist():
        u = urlparse(row["image_uri"])
        assert hashlib.sha256(s3.get_object(Bucket=u.netloc, Key=u.path.lstrip("/"))["Body"].read()).hexdigest() == row["image_sha256"]

    # MLflow: a parent run with the family run nested under it, metrics and images
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline-digits"
    assert parent.data.metrics["vae.test_bits_per_dim"] == pytest.approx(result["metrics"]["vae"]["bits_per_dim"])
    child = client.get_run(ckpt["meta"]["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    assert "test_bits_per_dim" in child.data.metrics and "loss" in child.data.metrics
    assert client.list_artifacts(child.info.run_id, "images")
    nested = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {"vae-digits", "vae-digits-seed1", "features-digits"} <= {r.info.run_name for r in nested}

    # on-demand generation from the MLflow run, through its own flow
    more = batch_generation(family=None, run_id=child.info.run_id, n=8, seed=3, out=f"s3://{bucket}/on-demand")
    assert more["num_images"] == 8 and more["out"] == f"s3://{bucket}/on-demand"


def test_deployments_register_with_schedule_and_parameters(project, prefect_api):
    cfg = load_config("params.yaml", [])
    for deployment in build_deployments("params.yaml"):
        deployment.apply()
    with get_client(sync_client=True) as client:
        scheduled = client.read_deployment_by_name(f"genpipe-pipeline/{PIPELINE}")
        on_demand = client.read_deployment_by_name(f"genpipe-batch-generation/{GENERATION}")
    assert [s.schedule.cron for s in scheduled.schedules] == [cfg.pipeline.schedule]
    assert scheduled.schedules[0].schedule.timezone == "UTC" and scheduled.schedules[0].active
    assert scheduled.parameters == {"params": "params.yaml"}
    assert on_demand.schedules == []
    assert on_demand.parameters == {"params": "params.yaml", "n": cfg.generate.n, "seed": cfg.generate.seed}
    assert set(on_demand.parameter_openapi_schema["properties"]) >= {"family", "run_id", "n", "seed", "labels", "out"}


def test_the_scheduled_pipeline_runs_one_at_a_time(project, prefect_api):
    """A second pipeline run that comes due while one runs is cancelled by the server, not started."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Pending

    scheduled = build_deployments("params.yaml")[0]
    deployment_id = scheduled.apply()
    with get_client(sync_client=True) as client:
        first, second = (client.create_flow_run_from_deployment(deployment_id) for _ in range(2))
        assert client.set_flow_run_state(first.id, Pending()).state.type == StateType.PENDING
        refused = client.set_flow_run_state(second.id, Pending())
        assert refused.state.type == StateType.CANCELLED and "concurrency limit" in refused.state.message
        assert client.read_flow_run(second.id).state.type == StateType.CANCELLED


def test_make_run_with_bad_params_fails_in_one_line_before_prefect_starts(project):
    """`make run` (`python -m flows.pipeline`) checks the params before Prefect starts a server."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=f"{root / 'src'}{os.pathsep}{root}", PREFECT_HOME=str(project / "prefect"))
    res = subprocess.run([sys.executable, "-m", "flows.pipeline", "-S", "vae.steps=true"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "genpipe: error: params.yaml: vae.steps: Value error, a boolean is not accepted here (got True)"
    assert not (project / "data").exists()
