"""Adding a family is one folder, one registry line and one params section: a seventh family,
written to a temporary module and registered at run time, goes through every stage (train,
evaluate with a sweep of its sampling setting, generate, report) with nothing else changed."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import TINY, write_params
from genpipe.cli import run
from genpipe.config import load_config
from genpipe.models import FAMILIES, register

TOY_MODULE = '''
"""A toy family: independent per-pixel Gaussians with a learnt mean and scale."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from genpipe.models.base import Family, ImageSpec, LogLikelihood, OptimizerGroup, check_labels, cpu_randn
from genpipe.models.distributions import discretized_gaussian_log_prob
from genpipe.sections import FamilyConfig, SamplingSection


class ToySamplingConfig(SamplingSection):
    temperature: float = Field(1.0, gt=0.0)  # scale of the noise


class ToyConfig(FamilyConfig):
    lr: float = Field(5e-2, gt=0.0, le=1.0)
    sampling: ToySamplingConfig = ToySamplingConfig()


class PixelGaussians(nn.Module):
    def __init__(self, cfg: ToyConfig, spec: ImageSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.mean = nn.Parameter(torch.zeros(spec.shape))
        self.log_scale = nn.Parameter(torch.zeros(spec.shape))

    def optimizer_groups(self):
        c = self.cfg
        return {"model": OptimizerGroup(list(self.parameters()), c.lr, c.betas, c.weight_decay)}

    def training_losses(self, x, labels, phase):
        return {"loss": -self._log_prob(x).mean() / x[0].numel()}

    def _log_prob(self, x):
        return discretized_gaussian_log_prob(x, self.mean.expand_as(x), self.log_scale.expand_as(x)).flatten(1).sum(1)

    def sample(self, n, labels=None, generator=None, options=None):
        o = options or self.cfg.sampling
        check_labels(labels, n, num_classes=self.spec.num_classes, conditional=self.cfg.conditional, family="toy")
        eps = cpu_randn((n, *self.spec.shape), generator, self.mean.device)
        return (self.mean + o.temperature * self.log_scale.exp() * eps).clamp(-1.0, 1.0)

    def log_likelihood(self, x, labels=None, generator=None):
        return LogLikelihood(self._log_prob(x).double(), "exact", "discretised-gaussian")


def claims(results, losses):
    return [f"'The toy family is no match for the data': FID {results['toy'].quality.fid:.3g}."]


FAMILY = Family(name="toy", config_type=ToyConfig, build=PixelGaussians, summary="per-pixel Gaussians",
                claims=claims)
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "genpipe_toy_family.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("genpipe_toy_family")
    register(module.FAMILY)
    yield module.FAMILY
    FAMILIES.pop("toy")
    sys.modules.pop("genpipe_toy_family", None)


def test_a_family_registered_at_run_time_goes_through_every_stage(project, toy_family, capsys):
    params = {**TINY, "families": ["toy", "vae"], "toy": {"steps": 30},
              "evaluate": {**TINY["evaluate"], "sweep": {"toy": [{"temperature": 0.5}, {"temperature": 1.0}]}}}
    write_params(project, params)
    cfg = load_config("params.yaml")
    assert cfg.family("toy").sampling.temperature == 1.0  # its section came with its registration

    for argv in (["prepare"], ["features"], ["train", "--family", "toy"], ["train", "--family", "vae"],
                 ["evaluate", "--family", "toy"], ["evaluate", "--family", "vae"],
                 ["generate", "--family", "toy", "--n", "5"], ["report"]):
        assert run(argv) == 0, argv

    summary = json.loads((project / "metrics/toy.json").read_text())
    assert summary["sampler"] == "temperature=1.0" and summary["bits_per_dim_is"] == "exact"
    assert 0 < summary["bits_per_dim"] < 8 and summary["train_steps"] == 30
    record = json.loads((project / "metrics/toy.provenance.json").read_text())
    assert [r["setting"] for r in record["sweep"]] == ["temperature=0.5", "temperature=1.0"]
    assert record["sweep"][1]["fid"] == pytest.approx(summary["fid"], rel=0.5)  # same setting, first images only

    manifest = pq.read_table(next((project / "generated/toy/manifests").glob("*.parquet")))
    assert manifest.num_rows == 5 and set(manifest.column("family").to_pylist()) == {"toy"}

    report = (project / "reports/comparison.md").read_text()
    assert "| toy | temperature=1.0 |" in report and "| toy | temperature=0.5 (sweep, n=24) |" in report
    assert "'The toy family is no match for the data': FID" in report  # its own claim, from its spec
    assert (project / "reports/figures/samples-toy.png").exists()
    assert (project / "reports/figures/fid_vs_nfe.png").exists()  # its sweep plotted like any other
    comparison = json.loads((project / "reports/comparison.json").read_text())
    assert comparison["best_fid"] in {"toy", "vae"}
    plots = yaml.safe_load((project / "reports/plots/fid_vs_nfe.json").read_text())
    assert {p["model"] for p in plots} == {"toy"}


def test_an_unregistered_family_is_a_clear_error(project):
    write_params(project, {**TINY, "families": ["toy"]})
    with pytest.raises(Exception, match=r"families: .*unknown family 'toy'"):
        load_config("params.yaml")
