"""DVC as its users drive it, on a git + DVC repo with this project's dvc.yaml, .gitignore and
plot templates: after a flow-style run, `dvc commit` makes `dvc status` clean and `dvc repro`
reproduces on a fresh copy; the metrics git keeps are committed and readable (`dvc metrics
show`, `dvc plots show`, `dvc exp show` after `dvc exp run -S`); `dvc push` to an S3 remote
(moto's server) and `dvc pull` into a fresh clone restore every output byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genpipe.config import load_config
from genpipe.data import prepare_dataset
from genpipe.evaluation.stage import evaluate_family
from genpipe.evaluation.features import train_feature_net
from genpipe.evaluation.report import write_report
from genpipe.generation import generate_images
from genpipe.storage import sha256_file
from genpipe.training import train_family
from genpipe.artifacts import load_checkpoint
from genpipe.tracking.dvc import commit_pipeline, pipeline_status
from tests.conftest import TINY, write_params

REPO = Path(__file__).resolve().parents[1]
# dvc.yaml's templates read these keys from params.yaml, so they must be spelled out there
DVC_KEYS = {"families": ["vae"], "stability_seeds": [], "data": {**TINY["data"], "path": "data/source"},
            "preset": None, "presets": {"grey28": {"data": {"resolution": 28}}}, "paths": {"data": "data/prepared", "models": "models", "metrics": "metrics", "figures": "figures", "reports": "reports"}}
OUTPUTS = ("data/prepared", "models", "figures", "generated", "metrics", "reports")  # every path a stage writes
GIT_ENV = {"GIT_AUTHOR_NAME": "genpipe test", "GIT_AUTHOR_EMAIL": "test@genpipe.invalid",
           "GIT_COMMITTER_NAME": "genpipe test", "GIT_COMMITTER_EMAIL": "test@genpipe.invalid"}


def params(steps: int) -> dict:
    return {**TINY, **DVC_KEYS, "train": {**TINY["train"], "steps": steps}, "generate": {"out": "generated", "n": 8, "batch_size": 8},
            "evaluate": {**TINY["evaluate"], "pr_k": 3, "dc_k": 5}}  # the features stage's params (the reference's k)


def run(folder: Path, *cmd: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(c) for c in cmd], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def dvc(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return run(folder, Path(sys.executable).with_name("dvc"), *args)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{proc.args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def make_repo(folder: Path) -> Path:
    """A git + DVC repo with this project's dvc.yaml, .gitignore, plot templates and sources."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, folder / name)
    shutil.copytree(REPO / "src/genpipe", folder / "src/genpipe", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data/source", folder / "data/source")  # what a clone has: prepare's source dependency
    write_params(folder, params(20))
    ok(run(folder, "git", "init", "-q"))
    ok(dvc(folder, "init", "-q"))
    shutil.copytree(REPO / ".dvc/plots", folder / ".dvc/plots")
    return folder


def files(root: Path) -> dict[str, str]:
    """sha256 of every file under the output paths of ``root``."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for top in OUTPUTS for p in sorted((root / top).rglob("*")) if p.is_file() and p.name != ".gitignore"}


@pytest.fixture(scope="module")
def committed(tmp_path_factory, mlflow_uri) -> Path:
    """A repo after a flow-style run, `dvc commit`, and `git commit` of what git keeps."""
    repo = make_repo(tmp_path_factory.mktemp("dvc") / "repo")
    old = Path.cwd()
    os.chdir(repo)
    try:
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
    finally:
        os.chdir(old)
    assert committed == ["evaluate@vae", "features", "generate@vae", "prepare", "report", "train@vae"]
    ok(run(repo, "git", "add", "-A"))
    ok(run(repo, "git", "commit", "-q", "-m", "a pipeline run"))
    return repo


def test_git_keeps_the_lock_and_the_metrics_dvc_the_rest(committed):
    tracked = set(ok(run(committed, "git", "ls-files")).split())
    assert {"dvc.lock", "metrics/vae.json", "metrics/vae.provenance.json", "reports/comparison.json",
            "reports/provenance.json", "reports/plots/precision_recall.json", "reports/plots/fid_vs_nfe.json"} <= tracked
    assert not [f for f in tracked if f.startswith(("data/", "models/", "figures/", "generated/"))
                and f not in ("data/source/README.md", "data/source/.gitignore")]  # the shipped source folder
    assert not [f for f in tracked if f.startswith("reports/") and f.endswith((".md", ".html", ".png"))]
    assert ok(run(committed, "git", "status", "--porcelain")) == ""  # nothing else left over, nothing dirty

    # `dvc metrics show`: the figures a person compares, no sha256s, paths or lists
    shown = json.loads(ok(dvc(committed, "metrics", "show", "--json")))[""]["data"]
    vae, real = shown["metrics/vae.json"]["data"], shown["reports/comparison.json"]["data"]
    for values in (vae, real):
        assert all(isinstance(v, (int, float)) or (isinstance(v, str) and len(v) <= 24) for v in values.values()), values
    assert vae["fid"] > 0 and vae["bits_per_dim"] > 0 and vae["bits_per_dim_is"] == "bound" and vae["nfe"] == 1
    assert set(real) >= {"fid", "kid", "precision", "recall"} and real["best_fid"] == "vae"
    record = json.loads((committed / "metrics/vae.provenance.json").read_text())
    assert vae["fid"] == record["quality"]["fid"] and record["checkpoint_sha256"] == sha256_file(committed / "models/vae/checkpoint.pt")

    # `dvc plots show`: precision vs recall told apart by model (the project's template)
    specs = json.loads(ok(dvc(committed, "plots", "show", "--json", "reports/plots/precision_recall.json")))
    spec = specs["data"]["reports/plots/precision_recall.json"][0]["content"]
    assert spec["layer"][0]["encoding"]["color"]["field"] == "model"
    assert {row["model"] for row in spec["data"]["values"]} == {"vae", "real (test split)"}


def test_status_clean_repro_does_nothing_and_reproduces_on_a_fresh_copy(committed, tmp_path, monkeypatch):
    repo = committed
    monkeypatch.chdir(repo)  # stage names relative to the repo, as a user there sees them
    assert pipeline_status(repo) == {}
    before = sha256_file(repo / "models/vae/checkpoint.pt")
    ok(dvc(repo, "repro"))
    assert sha256_file(repo / "models/vae/checkpoint.pt") == before  # nothing re-ran

    # a changed param makes exactly the stages that read it stale
    write_params(repo, params(21))
    assert set(pipeline_status(repo)) == {"train@vae"}
    write_params(repo, params(20))
    # and changed code makes exactly the stages that import it stale (tests/test_structure.py
    # checks the deps against the imports): the report's rendering, the batch generator
    for path, stale in (("src/genpipe/evaluation/render.py", {"report"}),
                        ("src/genpipe/generation/batch.py", {"evaluate@vae", "generate@vae"})):
        code = repo / path
        original = code.read_text()
        code.write_text(original + "\n# changed\n")
        assert set(pipeline_status(repo)) == stale, path
        code.write_text(original)
    # and an image added to the source folder (data.path) makes prepare stale
    (repo / "data/source/cats").mkdir()
    (repo / "data/source/cats/new.png").write_bytes(b"\x89PNG a new image")
    assert set(pipeline_status(repo)) == {"prepare"}
    shutil.rmtree(repo / "data/source/cats")
    assert pipeline_status(repo) == {}

    # a fresh copy without outputs: `dvc repro` reproduces them with the same content
    fresh = make_repo(tmp_path / "fresh")
    ok(dvc(fresh, "repro"))
    for shard in (repo / "data/prepared").glob("*.parquet"):
        assert sha256_file(fresh / "data/prepared" / shard.name) == sha256_file(shard)
    ours = load_checkpoint(repo / "models/vae/checkpoint.pt")["model"]  # still the 20-step run
    theirs = load_checkpoint(fresh / "models/vae/checkpoint.pt")["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # same seed, same CPU: same weights
    assert (fresh / "metrics/vae.json").exists() and list((fresh / "generated/vae/manifests").glob("*.parquet"))
    assert (fresh / "reports/comparison.md").exists() and (fresh / "reports/comparison.json").exists()
    assert pipeline_status(fresh) == {}


def test_push_to_s3_then_pull_into_a_fresh_clone_restores_every_output(committed, tmp_path, bucket, s3_server):
    repo = committed
    ok(dvc(repo, "remote", "add", "-d", "storage", f"s3://{bucket}/dvc"))
    ok(dvc(repo, "remote", "modify", "storage", "endpointurl", s3_server))
    ok(run(repo, "git", "commit", "-q", "-am", "an S3 remote"))
    ok(dvc(repo, "push"))
    assert json.loads(ok(dvc(repo, "status", "-c", "--json"))) == {}

    clone = tmp_path / "clone"
    ok(run(tmp_path, "git", "clone", "-q", repo, clone))
    assert not (clone / "models").exists() and (clone / "metrics/vae.json").exists()  # git brought the metrics
    ok(dvc(clone, "pull"))
    assert files(clone) == files(repo)
    assert json.loads(ok(dvc(clone, "status", "--json"))) == {}
    assert json.loads(ok(dvc(clone, "status", "-c", "--json"))) == {}
    dry = ok(dvc(clone, "repro", "--dry"))
    assert "Running stage" not in dry and "didn't change" in dry, dry


def test_an_experiment_keeps_its_metrics(committed):
    ok(dvc(committed, "exp", "run", "-n", "more-steps", "-S", "train.steps=24"))
    table = json.loads(ok(dvc(committed, "exp", "show", "--json")))

    def fid(rev: dict) -> float:
        return rev["data"]["metrics"]["metrics/vae.json"]["data"]["fid"]

    workspace = next(r for r in table if r["rev"] == "workspace")
    baseline = next(r for r in table if r["rev"] != "workspace")  # the commit the experiment branches from
    (experiment,) = [r for e in baseline["experiments"] for r in e["revs"] if r["name"] == "more-steps"]
    assert all(isinstance(fid(r), float) and fid(r) > 0 for r in (workspace, baseline, experiment))
    assert fid(experiment) != fid(baseline)  # its own evaluation, not the baseline's file
    assert experiment["data"]["params"]["params.yaml"]["data"]["train"]["steps"] == 24
    assert experiment["data"]["metrics"]["metrics/vae.json"]["data"]["train_steps"] == 24
