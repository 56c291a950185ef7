"""What a user finds in MLflow, read back with the `mlflow` command line on the temp sqlite store:
the experiment opens as model development; a training run's params say what ran, its dataset input
names the data by sha256; the feature network has a run of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow.tracking import MlflowClient

from genpipe import tracking
from genpipe.config import resolve
from genpipe.artifacts import load_checkpoint
from genpipe.training.stage import ran_params, run_params
from tests.conftest import TINY


def mlflow_cli(*args: str) -> str:
    proc = subprocess.run([Path(sys.executable).with_name("mlflow"), *args], env=os.environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_experiment_opens_as_model_development(trained_project, mlflow_uri):
    shown = mlflow_cli("experiments", "get", "--experiment-name", "genpipe")  # tracking.experiment's default
    assert "mlflow.experimentKind" in shown and "custom_model_development" in shown


def test_a_training_run_logs_what_ran_and_its_dataset(trained_project):
    state = load_checkpoint(trained_project / "models/vae/checkpoint.pt")
    run = json.loads(mlflow_cli("runs", "describe", "--run-id", state["meta"]["mlflow_run_id"]))
    params = run["data"]["params"]
    assert params["train.steps"] == "40" and params["train.batch_size"] == "16" and params["train.precision"] == "fp32"
    assert not {"vae.steps", "vae.batch_size", "vae.precision"} & set(params)  # folded into train.*, once
    assert "None" not in params.values()
    assert params["ran.device"] == "cpu" and params["ran.precision"] == "fp32"
    assert params["ran.world_size"] == "1" and params["ran.global_batch_size"] == "16"
    (dataset,) = run["inputs"]["dataset_inputs"]
    card = json.loads((trained_project / "data/prepared/card.json").read_text())
    assert dataset["dataset"]["name"] == "digits-1x8x8" and dataset["dataset"]["digest"] == card["sha256"][:16]
    assert json.loads(dataset["dataset"]["profile"])["sha256"] == card["sha256"]
    assert dataset["tags"]["mlflow.data.context"] == "train"


def test_the_params_fold_a_familys_own_settings_into_train():
    cfg = resolve({**TINY, "vae": {**TINY["vae"], "steps": 7, "batch_size": 4}})
    params = run_params(cfg, "vae")
    assert params["train.steps"] == "7" and params["train.batch_size"] == "4" and "vae.steps" not in params
    assert params["vae.latent_dim"] == "4" and not [k for k in params if k.startswith("gan.")]
    gmm = run_params(cfg, "gmm")  # fitted by EM: no optimizer steps to speak of
    assert not [k for k in gmm if k.startswith("train.")] and "gmm.components" in gmm
    assert ran_params({"meta": {"world_size": 2, "device": "cuda", "precision": "bf16"}}, 32) == {
        "ran.device": "cuda", "ran.world_size": "2", "ran.precision": "bf16", "ran.global_batch_size": "64"}


def test_the_feature_network_has_a_run_of_its_own(trained_project, mlflow_uri):
    card = json.loads((trained_project / "models/features/card.json").read_text())
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("genpipe").experiment_id],
                              f"tags.`genpipe.extractor_id` = '{card['id']}'")
    # other tests of the session train the same (deterministic) network into this store: this
    # project's run is the one that took this card's seconds
    runs = [r for r in runs if r.data.metrics.get("seconds") == card["seconds"]]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "features-digits" and run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == card["test_accuracy"]
    assert run.data.params["features.steps"] == str(card["steps"])
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2  # 150 steps: at 100 and 150
    assert {a.path for a in client.list_artifacts(run.info.run_id, "features")} == {
        "features/card.json", "features/classifier.pt", "features/reference.json"}


def test_runs_that_start_together_all_log_the_dataset(tmp_path):
    """The pipeline starts its families' runs at once: the store's first-use insert of the
    dataset row must not fail the ones that lose the race."""
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    card = {"source": "digits", "shape": [1, 8, 8], "sha256": "ab" * 32, "counts": {"train": 1}, "num_classes": 10}
    runs = [tracking.start_run("race", f"run-{i}", {}, {}, uri=uri) for i in range(6)]
    barrier = threading.Barrier(len(runs))

    def log(run_id: str) -> None:
        barrier.wait()
        tracking.log_dataset(run_id, card, tmp_path, uri=uri)

    with ThreadPoolExecutor(len(runs)) as pool:
        list(pool.map(log, runs))
    client = MlflowClient(uri)
    assert all(len(client.get_run(r).inputs.dataset_inputs) == 1 for r in runs)


def test_metrics_at_step_0_are_logged_and_a_resumed_logger_skips_only_logged_steps(mlflow_uri):
    run_id = tracking.start_run("genpipe-logger-test", "logger", {}, {}, uri=mlflow_uri)
    tracking.log_metrics(run_id, {"headline": 1.0}, uri=mlflow_uri)  # step 0, as the pipeline's parent run logs
    resumed = tracking.MlflowTrainLogger(run_id, mlflow_uri, after_step=30)
    for step in (25, 30, 35):
        resumed.log_metrics(step, {"loss": float(step)})
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).data.metrics["headline"] == 1.0
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [35]
    assert tracking.last_logged_step(run_id, mlflow_uri) == 35
