"""MLflow at the edges: run naming, params, tags, lineage, and the training logger."""

from genpipe.tracking.mlflow import (
    MlflowTrainLogger,
    client,
    end_run,
    finish_pipeline_run,
    flatten_params,
    git_commit,
    last_logged_step,
    log_artifact,
    log_dataset,
    log_metrics,
    log_params,
    set_tags,
    start_pipeline_run,
    start_run,
    tracking_uri,
)

__all__ = [
    "MlflowTrainLogger",
    "client",
    "end_run",
    "finish_pipeline_run",
    "flatten_params",
    "git_commit",
    "last_logged_step",
    "log_artifact",
    "log_dataset",
    "log_metrics",
    "log_params",
    "set_tags",
    "start_pipeline_run",
    "start_run",
    "tracking_uri",
]
