"""Shared fixtures: a tiny project folder, MLflow on a temp sqlite file, a local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# Tiny but real: 8x8 digits, a two-level VAE, tens of steps. Every test that trains uses it.
TINY = {
    "profile": "quick",
    "seed": 0,
    "data": {"resolution": 8},
    "train": {
        "runner": "local", "num_workers": 2, "steps": 40, "batch_size": 16, "warmup_steps": 5,
        "log_every": 5, "sample_every": 20, "checkpoint_every": 20, "threads": 1,
    },
    "vae": {"latent_dim": 4, "channels": [8, 16]},
    "evaluate": {"grid_samples": 16},
    "profiles": {"quick": {}, "full": {"train": {"steps": 100}}},
}


def write_params(folder: Path, tree: dict | None = None) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(tree if tree is not None else TINY, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite store for the session (creating its tables takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture
def project(tmp_path, monkeypatch, mlflow_uri) -> Path:
    """A fresh project folder with the tiny params.yaml, as the working directory."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def ray_cluster():
    """The local Ray cluster shared by the session: 2 CPUs, as on CI."""
    import ray

    ray.init(num_cpus=2, log_to_driver=True)
    yield
    ray.shutdown()
