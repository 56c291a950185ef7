"""DVC: the stages in dvc.yaml call the same functions as the flow; after a flow-style run,
`dvc commit` makes `dvc status` clean, and `dvc repro` on a fresh copy reproduces the outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from genpipe.config import load_config
from genpipe.data import prepare_dataset
from genpipe.evaluation import evaluate_family
from genpipe.evaluation.features import train_feature_net
from genpipe.evaluation.report import write_report
from genpipe.generation import generate_images
from genpipe.storage import sha256_file
from genpipe.training import train_family
from genpipe.training.checkpoint import load_checkpoint
from genpipe.tracking.dvc import commit_pipeline, pipeline_status
from tests.conftest import TINY, write_params

REPO = Path(__file__).resolve().parents[1]
# dvc.yaml's templates read these keys from params.yaml, so they must be spelled out there
DVC_KEYS = {"families": ["vae"], "stability_seeds": [], "paths": {"data": "data/prepared", "models": "models", "metrics": "metrics", "figures": "figures", "reports": "reports"}}


def params(steps: int) -> dict:
    return {**TINY, **DVC_KEYS, "train": {**TINY["train"], "steps": steps}, "generate": {"out": "generated", "n": 8, "batch_size": 8}}


def make_repo(folder: Path) -> Path:
    """A git + DVC repo with this project's dvc.yaml and sources, and the tiny params."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
    shutil.copy(REPO / ".dvcignore", folder / ".dvcignore")
    shutil.copytree(REPO / "src/genpipe", folder / "src/genpipe", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(folder, params(20))
    for cmd in (["git", "init", "-q"], [Path(sys.executable).with_name("dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=folder, check=True)
    return folder


def dvc(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([Path(sys.executable).with_name("dvc"), *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


def test_flow_outputs_committed_then_status_clean_and_repro_reproduces(tmp_path, monkeypatch, mlflow_uri):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    cfg = load_config("params.yaml")
    # what the flow's tasks do, in order
    prepare_dataset(cfg)
    train_feature_net(cfg, progress=False)
    train_family(cfg, "vae")
    evaluate_family(cfg, "vae")
    generate_images(cfg, "vae")
    write_report(cfg)
    assert pipeline_status(repo) != {}  # nothing recorded yet
    committed = commit_pipeline(repo)
    assert committed == ["evaluate@vae", "features", "generate@vae", "prepare", "report", "train@vae"]
    assert pipeline_status(repo) == {}
    before = sha256_file(repo / "models/vae/checkpoint.pt")
    proc = dvc(repo, "repro")
    assert proc.returncode == 0, proc.stderr
    assert sha256_file(repo / "models/vae/checkpoint.pt") == before  # nothing re-ran

    # a changed param makes exactly the stages that read it stale
    write_params(repo, params(21))
    assert set(pipeline_status(repo)) == {"train@vae"}
    write_params(repo, params(20))
    # and changed sampling code makes the stages that sample stale, not training
    sampler = repo / "src/genpipe/samplers/ddim.py"
    sampler.write_text(sampler.read_text() + "\n# changed\n")
    assert set(pipeline_status(repo)) == {"evaluate@vae", "generate@vae"}

    # a fresh copy without outputs: `dvc repro` reproduces them with the same content
    fresh = make_repo(tmp_path / "fresh")
    proc = dvc(fresh, "repro")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for shard in (repo / "data/prepared").glob("*.parquet"):
        assert sha256_file(fresh / "data/prepared" / shard.name) == sha256_file(shard)
    ours = load_checkpoint(repo / "models/vae/checkpoint.pt")["model"]  # still the 20-step run
    theirs = load_checkpoint(fresh / "models/vae/checkpoint.pt")["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # same seed, same CPU: same weights
    assert (fresh / "metrics/vae.json").exists() and list((fresh / "generated/vae/manifests").glob("*.parquet"))
    assert (fresh / "reports/comparison.md").exists() and (fresh / "reports/comparison.json").exists()
    assert pipeline_status(fresh) == {}
