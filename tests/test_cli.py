"""The CLI end to end, as `make run` calls it: prepare -> train -> evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from genpipe.training.checkpoint import load_checkpoint


def genpipe(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("genpipe")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_prepare_train_evaluate(project):
    outputs = {}
    for args in (["prepare"], ["train", "--family", "vae", "-S", "train.steps=20"], ["evaluate", "--family", "vae"]):
        proc = genpipe(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[args[0]] = proc.stdout
    assert "trained vae: 20 steps" in outputs["train"]
    assert json.loads(outputs["evaluate"])["likelihood"]["estimator"] == "iwae-64"
    assert load_checkpoint(project / "models/vae/checkpoint.pt")["step"] == 20
    metrics = json.loads((project / "metrics/vae.json").read_text())
    assert metrics["likelihood"]["bits_per_dim"] > 0 and (project / "figures/vae/samples.png").exists()


def test_evaluate_before_train_exits_2(project):
    assert genpipe("prepare").returncode == 0
    proc = genpipe("evaluate", "--family", "vae")
    assert proc.returncode == 2 and "models/vae/checkpoint.pt: no trained model" in proc.stderr
    assert not (project / "metrics").exists()
