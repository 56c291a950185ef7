"""The evaluate stage: held-out bits/dim, the sample grid, and where they are recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from genpipe.config import load_config
from genpipe.data import prepare_dataset
from genpipe.errors import InputError
from genpipe.artifacts import load_trained
from genpipe.evaluation.stage import evaluate_family, heldout_likelihood
from genpipe.images import make_grid
from genpipe.evaluation.features import train_feature_net
from genpipe.evaluation.speed import TimedSamples, sample_timed, sampling_speed
from genpipe.models import sampling_options
from genpipe.models.base import LogLikelihood
from genpipe.storage import sha256_file
from genpipe.training import train_family


class UniformModel(torch.nn.Module):
    """p(x) = 256^-D: every 8-bit image equally likely. Its code length is 8 bits/dim."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def log_likelihood(self, x, labels=None, generator=None):
        return LogLikelihood(torch.full((x.shape[0],), -x[0].numel() * math.log(256.0), dtype=torch.float64), "exact", "uniform")


def test_bits_per_dim_of_a_uniform_model_is_exactly_8():
    images = torch.randint(0, 256, (37, 3, 4, 5), dtype=torch.uint8)
    result = heldout_likelihood(UniformModel(), images, torch.zeros(37, dtype=torch.long), batch_size=10)
    assert result.bits_per_dim == pytest.approx(8.0, abs=1e-12)
    assert result.nll_nats == pytest.approx(60 * math.log(256.0))
    assert result.kind == "exact"


def test_make_grid_tiles_and_scales():
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    images[3] = 255
    grid = make_grid(images, nrow=5, pad=1, scale=2)
    assert grid.mode == "L" and grid.size == (2 * (5 * 5 + 1), 2 * (2 * 5 + 1))
    arr = np.asarray(grid)
    assert int(arr.max()) == 255 and int(arr.min()) == 0  # the white image and the black ones
    with pytest.raises(ValueError):
        make_grid(images.float())


def test_sampling_speed_is_the_median_rate_of_the_batches_after_the_warm_up():
    model = torch.nn.Linear(1, 1)  # NFE is the family's; a plain module counts 1
    images = torch.zeros(35, 1, 2, 2, dtype=torch.uint8)
    slow_first = TimedSamples(images, ((10, 100.0), (10, 1.0), (10, 4.0), (5, 0.5)))  # 0.1, then 10, 2.5, 10 images/s
    speed = sampling_speed(model, None, slow_first)
    assert speed["images_per_s"] == 10.0 and speed["timed_batches"] == 3 and speed["warm_up_excluded"] is True
    assert speed["batch_size"] == 10
    even = TimedSamples(images[:30], ((10, 100.0), (10, 1.0), (10, 4.0)))  # median of 10 and 2.5
    assert sampling_speed(model, None, even)["images_per_s"] == 6.25
    single = sampling_speed(model, None, TimedSamples(images[:10], ((10, 2.0),)))  # nothing to leave out
    assert single["images_per_s"] == 5.0 and single["warm_up_excluded"] is False and single["timed_batches"] == 1
    assert slow_first.seconds == 105.5


def test_evaluate_writes_metrics_and_grid_and_logs_them(project, mlflow_uri, monkeypatch):
    cfg = load_config("params.yaml")
    prepare_dataset(cfg)
    with pytest.raises(InputError, match="run `genpipe train --family vae` first"):
        evaluate_family(cfg, "vae")
    out = train_family(cfg, "vae")
    with pytest.raises(InputError, match="run `genpipe features` first"):
        evaluate_family(cfg, "vae")
    card = train_feature_net(cfg, progress=False)
    result = evaluate_family(cfg, "vae")
    metrics = result.record()

    assert json.loads((project / "metrics/vae.provenance.json").read_text()) == metrics  # the full record
    summary = json.loads((project / "metrics/vae.json").read_text())  # the DVC metrics: flat figures
    assert summary == result.summary() and summary["fid"] == metrics["quality"]["fid"] == result.quality.fid
    assert summary["bits_per_dim"] == metrics["likelihood"]["bits_per_dim"] and summary["bits_per_dim_is"] == "bound"
    assert not [k for k, v in summary.items() if isinstance(v, (dict, list)) or "sha256" in k]
    ll = metrics["likelihood"]
    assert ll["kind"] == "lower_bound" and ll["estimator"] == "iwae-64"
    assert ll["bits_per_dim"] == pytest.approx(ll["nll_nats"] / (64 * math.log(2)))
    assert 0.5 < ll["bits_per_dim"] < 8.0  # trained, if briefly: better than uniform
    assert metrics["num_images"] == json.loads((project / "data/prepared/card.json").read_text())["counts"]["test"]
    assert metrics["checkpoint_sha256"] == sha256_file(out.checkpoint)
    assert metrics["mlflow_run_id"] == out.run_id and metrics["checkpoint_step"] == 40
    grid = Image.open(project / metrics["samples_png"])
    assert grid.size[0] > 4 * 8 * 4  # 16 samples, 4 per row, upscaled
    # the grid shows the first 16 of the scored images (the same 48 from the same seed, 12 at a time)
    model, _ = load_trained(cfg, "vae")
    scored = sample_timed(model, 48, sampling_options(cfg, "vae"), cfg.seed, 12)
    assert [n for n, _ in scored.batches] == [12, 12, 12, 12]
    assert np.array_equal(np.asarray(grid), np.asarray(make_grid(scored.images[:16])))
    assert metrics["figures"] == ["figures/vae/samples.png", "figures/vae/interpolation.png", "figures/vae/traversal.png"]
    inter = Image.open(project / "figures/vae/interpolation.png")
    assert inter.size == (4 * (10 * 10 + 2), 4 * (8 * 10 + 2))  # 8 rows of 10 frames, 8x8 images, pad 2

    client = MlflowClient(mlflow_uri)
    run = client.get_run(out.run_id)
    assert run.data.metrics["test_bits_per_dim"] == pytest.approx(ll["bits_per_dim"])
    assert {a.path for a in client.list_artifacts(out.run_id, "evaluation")} == {
        "evaluation/vae.json", "evaluation/vae.provenance.json", "evaluation/samples.png",
        "evaluation/interpolation.png", "evaluation/traversal.png"
    }
    # the protocol: every distribution metric, named by its extractor and sample count
    q = metrics["quality"]
    assert q["extractor_id"] == card["id"] and metrics["extractor"]["id"] == card["id"]
    assert q["num_samples"] == 48 and q["seed"] == 0
    assert q["fid"] > 0 and 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1 and 0 <= q["coverage"] <= 1
    # ... and they are the metrics of exactly those 48 images against the train split's features
    from genpipe.evaluation.features import load_extractor
    from genpipe.evaluation.quality import load_reference, sample_quality

    extractor = load_extractor(cfg)
    direct = sample_quality(scored.images, load_reference(cfg, extractor), extractor, cfg)
    for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "inception_score"):
        assert q[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), key
    assert 1.0 <= q["inception_score"] <= 10.0 and 1 <= q["classes_covered"] <= 10
    assert q["memorisation"]["ratio"] > 0
    # timed on the scored batches (48 = 4 x 12), the first left out as the warm-up
    assert metrics["speed"]["nfe"] == 1 and metrics["speed"]["images_per_s"] > 0 and metrics["speed"]["batch_size"] == 12
    assert metrics["speed"]["timed_batches"] == 3 and metrics["speed"]["warm_up_excluded"] is True
    assert metrics["training"]["steps"] == 40 and metrics["training"]["seconds"] > 0
    assert metrics["training"]["precision"] == "fp32"  # what the steps ran in (tests pin fp32)
    assert run.data.metrics["eval/fid"] == pytest.approx(q["fid"])
    # evaluation is reproducible: same checkpoint, same seed, same numbers; and it draws the 48
    # scored images and nothing else (no grid or timing batches of their own)
    drawn, sample = [], type(model).sample

    def counting(self, n, *args, **kwargs):
        drawn.append(n)
        return sample(self, n, *args, **kwargs)

    monkeypatch.setattr(type(model), "sample", counting)
    again = evaluate_family(cfg, "vae").record()
    assert drawn == [12, 12, 12, 12]
    assert again["likelihood"] == ll
    assert again["quality"]["fid"] == q["fid"] and again["quality"]["kid"] == q["kid"]


def test_stability_seeds_train_replicates_and_report_the_fid_spread(project, mlflow_uri):
    """With stability_seeds, `genpipe train` trains a replicate per seed beside the model, and
    evaluate scores each with the same sampling noise: the spread of FID across training seeds."""
    from genpipe.cli import run

    cfg = load_config("params.yaml", ["stability_seeds=[1]"])
    prepare_dataset(cfg)
    train_feature_net(cfg, progress=False)
    assert run(["train", "--family", "vae", "-S", "stability_seeds=[1]"]) == 0  # seed 0, then seed 1
    main, replicate = project / "models/vae/checkpoint.pt", project / "models/vae/seeds/1/checkpoint.pt"
    assert main.exists() and replicate.exists() and sha256_file(main) != sha256_file(replicate)
    assert json.loads((project / "models/vae/seeds/1/config.json").read_text())["seed"] == 1

    metrics = evaluate_family(cfg, "vae").record()
    seeds = metrics["seeds"]
    assert seeds["training_seeds"] == [0, 1] and seeds["checkpoint_sha256"] == [sha256_file(main), sha256_file(replicate)]
    assert seeds["fid"][0] == metrics["quality"]["fid"]  # the model itself is the first replicate
    assert seeds["fid"][1] != seeds["fid"][0]  # another training seed, another model
    assert seeds["fid_mean"] == pytest.approx(sum(seeds["fid"]) / 2)
    assert seeds["fid_std"] == pytest.approx(abs(seeds["fid"][1] - seeds["fid"][0]) / math.sqrt(2))  # sd with n - 1

    with pytest.raises(InputError, match=r"models/vae/seeds/2/checkpoint.pt: no vae trained with seed 2"):
        evaluate_family(load_config("params.yaml", ["stability_seeds=[1,2]"]), "vae")
    with pytest.raises(InputError, match="--seed 5: not one of stability_seeds"):
        train_family(cfg, "vae", seed=5)


def test_diffusion_sampler_sweep_rows_and_the_reused_main_setting(in_trained):
    """Each sweep entry overrides diffusion.sampling; its row names sampler, NFE, sample count and
    extractor. The entry equal to the main setting scores the main evaluation's first images
    (the same numbers as scoring them directly); a bad entry is an error naming it."""
    from genpipe.evaluation import metrics as M
    from genpipe.evaluation.features import load_extractor
    from genpipe.evaluation.quality import load_reference
    from genpipe.evaluation.stage import sampler_sweep
    from genpipe.models import ImageSpec, get_family

    overrides = ["diffusion.timesteps=20", "diffusion.channels=8", "diffusion.channel_mults=[1,2]",
                 "diffusion.attention_levels=[]", "diffusion.sampling.steps=5", "evaluate.sweep_samples=24",
                 "evaluate.sweep.diffusion=[{sampler: ddim, steps: 5}, {sampler: dpm_solver++, steps: 4}, {sampler: ddpm}]"]
    cfg = load_config("params.yaml", overrides)
    torch.manual_seed(0)
    model = get_family("diffusion").build(cfg.family("diffusion"), ImageSpec((1, 8, 8), 10)).eval()  # untrained: any net will do
    extractor = load_extractor(cfg)
    ref = load_reference(cfg, extractor)
    base = sampling_options(cfg, "diffusion")
    main = sample_timed(model, 40, base, cfg.seed, 16)
    rows = sampler_sweep(cfg, "diffusion", model, base, extractor, ref, main)
    assert [(r.sampler, r.setting, r.nfe) for r in rows] == [
        ("ddim", "ddim-5", 5), ("dpm_solver++", "dpm_solver++-4", 4), ("ddpm", "ddpm", 20)]
    assert all(r.num_samples == 24 and r.extractor_id == extractor.id and r.seed == 0 for r in rows)
    assert rows[0].fid == M.frechet_distance(ref.train_features, extractor.features(main.images[:24], 16))
    assert rows[0].images_per_s == sampling_speed(model, base, main)["images_per_s"]  # the main setting's speed
    assert len({r.fid for r in rows}) == 3

    # a bad entry fails when params load (before any training), naming the entry
    with pytest.raises(InputError, match=r"^params.yaml: evaluate.sweep.diffusion\[0\]: .*steps=50 exceeds timesteps=20"):
        load_config("params.yaml", [*overrides[:-1], "evaluate.sweep.diffusion=[{sampler: ddim, steps: 50}]"])
    with pytest.raises(InputError, match=r"^params.yaml: evaluate.sweep.diffusion\[1\]: sampler: Input should be 'ddpm', 'ddim'"):
        load_config("params.yaml", [*overrides[:-1], "evaluate.sweep.diffusion=[{sampler: ddim}, {sampler: euler}]"])
    with pytest.raises(InputError, match=r"^params.yaml: evaluate.sweep.vae: the vae family has no sampling settings"):
        load_config("params.yaml", [*overrides[:-1], "evaluate.sweep.vae=[{temperature: 1}]"])
    with pytest.raises(InputError, match=r"^params.yaml: evaluate.sweep.nosuch: unknown family"):
        load_config("params.yaml", [*overrides[:-1], "evaluate.sweep.nosuch=[{a: 1}]"])


class _StubExtractor:
    """Features and class probabilities from fixed random projections (any number of classes)."""

    id = "stub"

    def __init__(self, num_classes: int):
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(16, 8, generator=g, dtype=torch.float64)
        self.head = torch.randn(8, num_classes, generator=g, dtype=torch.float64)

    def features_and_probs(self, images, batch_size, probs=True):
        feats = (images.reshape(len(images), -1)[:, :16].double() / 255.0) @ self.proj
        return feats, torch.softmax(feats @ self.head, dim=1) if probs else None


@pytest.mark.parametrize("extractor_classes", [3, 1008])  # the data's classes | Inception's ImageNet ones
def test_sample_quality_takes_a_class_histogram_only_over_the_datas_classes(extractor_classes):
    from genpipe.data import ImageSplit
    from genpipe.evaluation.quality import reference_quality, sample_quality
    from genpipe.evaluation.reference import compute_reference

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (50, 1, 4, 4), generator=g, dtype=torch.uint8)
    card = {"sha256": "d", "num_classes": 3, "shape": [1, 4, 4]}
    train, test = (ImageSplit(x, torch.arange(len(x)) % 3, card) for x in (images[:40], images[40:]))
    ext = _StubExtractor(extractor_classes)
    ref = compute_reference(ext, train, test, pr_k=3, dc_k=5, batch_size=8)
    cfg = load_config(Path(__file__).resolve().parents[2] / "params.yaml", ["evaluate.kid_subset_size=10"])
    for out in (sample_quality(torch.randint(0, 256, (30, 1, 4, 4), generator=g, dtype=torch.uint8), ref, ext, cfg),
                reference_quality(ref, cfg)):
        assert math.isfinite(out["inception_score"]) and math.isfinite(out["fid"])
        assert ("classes_covered" in out) == (extractor_classes == 3)
