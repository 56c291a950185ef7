"""The same loop under Ray Train: 2 CPU workers, DDP on gloo, rank 0 logging to MLflow."""

from __future__ import annotations

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

from genpipe.config import load_config
from genpipe.data import prepare_dataset
from genpipe.artifacts import load_trained
from genpipe.training import train_family
from genpipe.artifacts import load_checkpoint

pytestmark = pytest.mark.ray


def test_ray_train_two_workers_checkpoint_and_mlflow_run(project, ray_cluster, mlflow_uri):
    cfg = load_config("params.yaml", ["train.runner=ray", "train.num_workers=2", "train.storage_path=ray"])
    prepare_dataset(cfg)
    out = train_family(cfg, "vae")

    family_dir = project / "models/vae"
    assert sorted(p.name for p in family_dir.iterdir()) == ["checkpoint.pt", "config.json"]
    state = load_checkpoint(out.checkpoint)
    assert state["step"] == 40 and state["meta"]["world_size"] == 2
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert out.losses["loss"] > 0 and out.step == 40
    # Ray persisted the reported checkpoints under the storage path, under the run's name
    assert list((project / "ray").glob(f"vae-digits-{out.run_id[:8]}/checkpoint_*"))

    client = MlflowClient(mlflow_uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "vae-digits"
    assert run.data.params["train.num_workers"] == "2"
    loss = client.get_metric_history(out.run_id, "loss")
    assert [m.step for m in loss] == list(range(5, 41, 5)) and all(m.value > 0 for m in loss)
    assert {a.path for a in client.list_artifacts(out.run_id, "checkpoint")} == {
        "checkpoint/checkpoint.pt", "checkpoint/config.json"
    }
    assert len(client.list_artifacts(out.run_id, "images")) >= 2

    model, _ = load_trained(cfg, "vae")  # the checkpoint loads and samples
    x = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()

    # the lean trainer: no per-fit actors for datasets, placement-group cleanup or preemption
    # (the session's own cluster by address: another local Ray instance would make "auto" ambiguous)
    actors = {a.class_name for a in list_actors(address=ray.get_runtime_context().gcs_address, limit=10_000)}
    assert {"TrainController", "RayTrainWorker"} <= actors
    assert not actors & {"DatasetManager", "PlacementGroupCleaner", "PreemptionWatcher"}, actors


def test_divergence_on_ray_workers_is_one_line_and_a_failed_run(project, ray_cluster, mlflow_uri, capfd):
    """A loss that blows up on 2 Ray workers (after the driver's pre-flight passed): the driver's
    one line names family, step and the run it marked FAILED; the run carries the reason as a
    tag; no checkpoint is promoted; the workers print no traceback for it."""
    import re
    import time

    from genpipe.errors import InputError

    cfg = load_config("params.yaml", ["train.runner=ray", "train.num_workers=2", "train.storage_path=ray",
                                      "flow.lr=1", "train.grad_clip=1e30"])
    prepare_dataset(cfg)
    with pytest.raises(InputError, match=r"^flow: training diverged at step \d+ \(loss .*\); .* "
                                         r"\(MLflow run [0-9a-f]{32} marked FAILED\)$") as err:
        train_family(cfg, "flow")
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", str(err.value)).group(1)
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["genpipe.failure"].startswith("flow: training diverged at step")
    assert not (project / "models/flow/checkpoint.pt").exists()
    time.sleep(2)  # the workers' log lines reach the driver asynchronously
    out = capfd.readouterr()
    assert "Error in training function" not in out.out + out.err
