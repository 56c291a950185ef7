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
        "precision": "fp32",  # the same numbers on every CPU (auto is bf16 where the CPU has it)
        "log_every": 5, "sample_every": 20, "checkpoint_every": 20, "threads": 1,
    },
    "vae": {"latent_dim": 4, "channels": [8, 16]},
    "evaluate": {"grid_samples": 16, "num_samples": 48, "kid_subsets": 5, "kid_subset_size": 24,
                 "batch_size": 12, "sweep_samples": 24, "sweep": {}},
    "features": {"steps": 150, "width": 8, "feature_dim": 16, "batch_size": 32, "lr": 1.0e-2},
    "profiles": {"quick": {}, "full": {"train": {"steps": 100}}},
}


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is available (never on CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_params(folder: Path, tree: dict | None = None) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(tree if tree is not None else TINY, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    tiny tensors and matrix products gain nothing from a second thread on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_killed_after_first_checkpoint(monkeypatch, cfg, family: str) -> None:
    """Train ``family`` until its first checkpoint is written, then die as a killed process would."""
    from genpipe.training import train_family
    from genpipe.training.stage import LocalCheckpointer

    original = LocalCheckpointer.save

    def crash_after_first(self, state, step, final, metrics):
        original(self, state, step, final, metrics)
        raise KeyboardInterrupt  # the process dies right after the checkpoint

    monkeypatch.setattr(LocalCheckpointer, "save", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_family(cfg, family)
    monkeypatch.setattr(LocalCheckpointer, "save", original)


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
def s3_server():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server), with the standard AWS variables
    pointing at it, set before Ray starts so that Ray workers see them too."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "genpipe-test",
        "AWS_SECRET_ACCESS_KEY": "genpipe-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket on the moto server."""
    import uuid

    import boto3

    name = f"genpipe-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """The local Ray cluster shared by the session: 2 CPUs, as on CI."""
    import ray

    ray.init(num_cpus=2, log_to_driver=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, mlflow_uri) -> Path:
    """A project folder with the tiny dataset prepared and a tiny VAE trained (in-process).

    Shared by the session: tests may read it and write new outputs, not change what is there.
    """
    from genpipe.config import load_config
    from genpipe.data import prepare_dataset
    from genpipe.evaluation.features import train_feature_net
    from genpipe.training import train_family

    folder = tmp_path_factory.mktemp("trained")
    write_params(folder)
    old = Path.cwd()
    os.chdir(folder)
    try:
        cfg = load_config("params.yaml")
        prepare_dataset(cfg)
        train_family(cfg, "vae")
        train_feature_net(cfg, progress=False)
    finally:
        os.chdir(old)
    return folder


@pytest.fixture
def in_trained(trained_project, monkeypatch) -> Path:
    monkeypatch.chdir(trained_project)
    return trained_project


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's real local API (a temporary server on a temp sqlite database)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
