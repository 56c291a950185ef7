"""Thin Prefect tasks: each loads the config and calls ONE genpipe library function.

Tasks take the params file and overrides (plain strings) rather than a config object, so
their inputs are small, serialisable and shown as-is in the Prefect UI. Retries are set
only where a retry can help: training (a Ray worker lost), the feature network and generation
(an S3 hiccup); bad user input (``InputError``) is never retried.
"""

from tasks.stages import (
    evaluate,
    features,
    finish_pipeline_run,
    generate,
    prepare,
    record_with_dvc,
    report,
    start_pipeline_run,
    train,
)

__all__ = ["evaluate", "features", "finish_pipeline_run", "generate", "prepare", "record_with_dvc", "report", "start_pipeline_run", "train"]
