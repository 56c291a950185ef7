"""The CLI end to end, as `make run` calls it: prepare -> train -> evaluate."""

from __future__ import annotations

import json

import pytest
import subprocess
import sys
from pathlib import Path

from genpipe.artifacts import load_checkpoint


def genpipe(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("genpipe")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_prepare_train_evaluate_report(project):
    outputs = {}
    for args in (["prepare"], ["train", "--family", "vae", "-S", "train.steps=20"], ["features"],
                 ["evaluate", "--family", "vae"], ["report"]):
        proc = genpipe(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[args[0]] = proc.stdout
    assert "trained vae (seed 0): 20 steps" in outputs["train"]
    assert json.loads(outputs["evaluate"])["likelihood"]["estimator"] == "iwae-64"
    assert load_checkpoint(project / "models/vae/checkpoint.pt")["step"] == 20
    metrics = json.loads((project / "metrics/vae.json").read_text())
    record = json.loads((project / "metrics/vae.provenance.json").read_text())
    assert metrics["bits_per_dim"] == record["likelihood"]["bits_per_dim"] > 0
    assert (project / "figures/vae/samples.png").exists()
    assert "feature network domain-cnn-" in outputs["features"]
    assert json.loads(outputs["evaluate"])["extractor"] == record["quality"]["extractor_id"]
    md = (project / "reports/comparison.md").read_text()
    assert f"| vae | — | {metrics['fid']:.3g} |" in md  # the row carries the evaluated FID
    assert "real (test split)" in md and (project / "reports/comparison.html").exists()
    assert (project / "reports/figures/precision_recall.png").exists()
    assert "**" not in outputs["report"] and "Best image quality by FID: vae" in outputs["report"]  # no markdown marks
    summary = json.loads((project / "reports/comparison.json").read_text())
    assert summary["model"] == "real (test split)" and summary["best_fid"] == "vae"
    card = json.loads((project / "data/prepared/card.json").read_text())
    assert summary["num_samples"] == card["counts"]["test"] and summary["fid"] < metrics["fid"]  # the real row


def test_report_before_evaluate_exits_2(project):
    assert genpipe("prepare").returncode == 0
    proc = genpipe("report")
    assert proc.returncode == 2 and "metrics/vae.provenance.json: no evaluation of vae" in proc.stderr
    assert not (project / "reports").exists()


def test_evaluate_before_train_exits_2(project):
    assert genpipe("prepare").returncode == 0
    proc = genpipe("evaluate", "--family", "vae")
    assert proc.returncode == 2 and "models/vae/checkpoint.pt: no trained model" in proc.stderr
    assert not (project / "metrics").exists()
