"""The real data's reference statistics: written once by the features stage, read by evaluation
and the report, the same numbers as recomputing them; stale or broken files are one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from genpipe.config import load_config
from genpipe.data import load_split, prepare_dataset
from genpipe.errors import InputError
from genpipe.evaluation import metrics as M
from genpipe.evaluation.features import load_extractor, train_feature_net
from genpipe.evaluation.quality import load_reference, reference_quality, sample_quality
from genpipe.evaluation.reference import pixels, sharpness
from genpipe.evaluation.report import real_reference
from genpipe.storage import sha256_file
from tests.conftest import write_params

# a narrow classifier trained briefly: the metrics need features, not good ones
NET = ["features.steps=30", "features.width=4", "features.feature_dim=8", "features.batch_size=32", "features.lr=1e-2",
       "evaluate.num_samples=40", "evaluate.grid_samples=8", "evaluate.kid_subsets=4", "evaluate.kid_subset_size=20",
       "evaluate.batch_size=32"]
SHAPES = {  # colour and the sizes of real data
    "3x32x32": ["data.source=shapes", "data.resolution=32", "data.shapes.num_images=240"],
    "1x28x28": ["data.resolution=28"],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=list(SHAPES))
def prepared(request, tmp_path_factory):
    """A dataset of that shape and its feature network with the reference beside it (read only)."""
    folder = tmp_path_factory.mktemp(f"reference-{request.param}")
    write_params(folder)
    overrides = [f"paths.data={folder / 'data'}", f"paths.models={folder / 'models'}", *NET, *SHAPES[request.param]]
    cfg = load_config(folder / "params.yaml", overrides)
    prepare_dataset(cfg)
    card = train_feature_net(cfg, progress=False)
    return cfg, card, overrides


def _recomputed_quality(images, cfg, extractor, train, test):
    """What evaluation computed before the reference was stored: every real-side figure again."""
    e = cfg.evaluate
    real = extractor.features(train.images, e.batch_size)
    feats, probs = extractor.features_and_probs(images, e.batch_size)
    counts = torch.bincount(train.labels.long(), minlength=train.num_classes).double()
    p, r = M.precision_recall(real, feats, e.pr_k)
    d, c = M.density_coverage(real, feats, e.dc_k)
    kid, kid_std = M.kernel_inception_distance(real, feats, e.kid_subsets, e.kid_subset_size, seed=cfg.seed)
    is_mean, is_std = M.inception_score(probs)
    hist = M.class_histogram(probs, counts / counts.sum())
    return {"fid": M.frechet_distance(real, feats), "kid": kid, "kid_std": kid_std, "precision": p, "recall": r,
            "density": d, "coverage": c, "inception_score": is_mean, "inception_score_std": is_std,
            "classes_covered": hist["classes_covered"], "class_kl": hist["kl_to_labels"],
            "class_fractions": hist["fractions"], "sharpness_ratio": sharpness(images) / sharpness(train.images),
            "memorisation": M.memorisation(pixels(train.images), pixels(images), pixels(test.images))}


def _same(new: dict, old: dict) -> None:
    for key, want in old.items():
        got = new[key]
        if isinstance(want, dict):
            _same(got, want)
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), key


def test_the_stored_reference_gives_the_numbers_of_recomputing_it(prepared):
    """Colour 32 px and grey 28 px: the features stage wrote the reference for this dataset and
    extractor, and every metric read from it equals the metric recomputed from the real data,
    for generated images (here: noisy test images) and for the report's real-data row."""
    cfg, card, _ = prepared
    folder = cfg.paths.models / "features"
    meta = json.loads((folder / "reference.json").read_text())
    train, test = load_split(cfg.paths.data, "train"), load_split(cfg.paths.data, "test")
    assert meta["dataset_sha256"] == train.card["sha256"] == card["dataset_sha256"]
    assert meta["extractor_id"] == card["id"] and meta["sha256"] == sha256_file(folder / "reference.pt")
    assert meta["splits"] == {"reference": "train", "heldout": "test"}
    assert (meta["pr_k"], meta["dc_k"]) == (3, 5) and meta["num_images"] == {"reference": len(train), "heldout": len(test)}
    assert meta["tensors"]["train_features"] == [len(train), 8] and meta["tensors"]["fid_cov"] == [8, 8]

    extractor = load_extractor(cfg)
    ref = load_reference(cfg, extractor)
    assert torch.equal(ref.train_features, extractor.features(train.images, cfg.evaluate.batch_size))
    g = torch.Generator().manual_seed(0)
    noisy = (test.images.short() + torch.randint(-40, 41, test.images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    new = sample_quality(noisy, ref, extractor, cfg)
    _same(new, _recomputed_quality(noisy, cfg, extractor, train, test))
    assert new["fid"] > 0 and 0 <= new["precision"] <= 1 and new["memorisation"]["ratio"] > 0
    real_row = reference_quality(load_reference(cfg, extractor, with_pixels=False), cfg)
    _same(real_row, _recomputed_quality(test.images, cfg, extractor, train, test))
    assert real_row["memorisation"]["ratio"] == 1.0 and real_row["num_samples"] == len(test)
    assert real_row["extractor_id"] == extractor.id and real_reference(cfg).fid == real_row["fid"]  # the report's row


def test_precomputed_real_sides_equal_the_standalone_metrics():
    """Each metric with its real side given (as the reference stores it) against computing it."""
    g = torch.Generator().manual_seed(3)
    real = torch.randn(300, 6, generator=g, dtype=torch.float64) + 50.0  # off the origin, as features are
    fake = torch.randn(200, 6, generator=g, dtype=torch.float64) * 1.2 + 50.3
    heldout = torch.randn(80, 6, generator=g, dtype=torch.float64) + 50.0
    stats = M.feature_gaussian(real)
    assert M.frechet_distance(None, fake, real_stats=stats) == pytest.approx(M.frechet_distance(real, fake), rel=1e-9)
    assert M.frechet_distance(None, fake, batch_size=7, real_stats=M.feature_gaussian(real, 7)) == pytest.approx(
        M.frechet_distance(real, fake, batch_size=7), rel=1e-12)
    assert M.precision_recall(real, fake, 3, real_radii=M.knn_radii(real, 3)) == M.precision_recall(real, fake, 3)
    assert M.density_coverage(real, fake, 5, real_radii=M.knn_radii(real, 5)) == M.density_coverage(real, fake, 5)
    held = M.nearest_train_distances(real, heldout)
    assert M.memorisation(real, fake, heldout_to_train=held) == M.memorisation(real, fake, heldout)
    with pytest.raises(ValueError, match=r"real_radii: expected shape \(300,\)"):
        M.precision_recall(real, fake, 3, real_radii=M.knn_radii(real[:10], 3))
    with pytest.raises(InputError, match=r"evaluate\.num_samples: 4 generated samples are fewer than the 6"):
        M.frechet_distance(None, fake[:4], real_stats=stats)


def _copy(cfg, tmp_path):
    shutil.copytree(cfg.paths.models / "features", tmp_path / "models" / "features")
    return cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"models": tmp_path / "models"})})


def _edit_card(folder, **changes):
    path = folder / "reference.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _foreign_tensors(folder):
    path = folder / "reference.pt"
    torch.save({"train_features": torch.zeros(3, 2)}, path)
    _edit_card(folder, sha256=sha256_file(path))


BROKEN = {  # how the reference goes wrong -> what the one line says
    "missing tensors": (lambda f: (f / "reference.pt").unlink(), r"reference\.pt: no reference statistics"),
    "missing card": (lambda f: (f / "reference.json").unlink(), r"reference\.json: no reference statistics"),
    "junk card": (lambda f: (f / "reference.json").write_text("{not json"), r"reference\.json: not a reference statistics card"),
    "flipped byte": (lambda f: (f / "reference.pt").write_bytes(b"x" + (f / "reference.pt").read_bytes()[1:]),
                     r"reference\.pt: sha256 does not match .*reference\.json"),
    "other dataset": (lambda f: _edit_card(f, dataset_sha256="0" * 64), r"reference\.json: computed on dataset 000000000000, but"),
    "other extractor": (lambda f: _edit_card(f, extractor_id="domain-cnn-000000000000"),
                        r"reference\.json: computed with feature extractor domain-cnn-000000000000, but evaluation uses domain-cnn-"),
    "foreign tensors": (_foreign_tensors, r"reference\.pt: its tensors are not the reference statistics"),
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_missing_stale_or_broken_reference_is_one_line(in_trained, tmp_path, how):
    cfg = _copy(load_config("params.yaml"), tmp_path)
    damage, says = BROKEN[how]
    damage(cfg.paths.models / "features")
    for read in (lambda: load_reference(cfg, load_extractor(cfg)), lambda: real_reference(cfg)):  # evaluate, report
        with pytest.raises(InputError, match=says) as err:
            read()
        assert "\n" not in str(err.value) and str(err.value).endswith("run `genpipe features` again")


def test_other_k_than_the_reference_was_computed_for_is_one_line(in_trained):
    other = load_config("params.yaml", ["evaluate.pr_k=4"])
    with pytest.raises(InputError, match=r"reference\.json: k-NN radii for evaluate\.pr_k=3, but evaluate\.pr_k=4 now; "
                                         r"run `genpipe features` again with the same settings"):
        load_reference(other, load_extractor(other))


def test_evaluate_without_a_reference_exits_2_with_one_line_and_writes_nothing(trained_project, tmp_path, monkeypatch,
                                                                                capsys):
    from genpipe.cli import main

    for name in ("data", "models", "params.yaml"):
        src = trained_project / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "models" / "features" / "reference.pt").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--family", "vae"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert "models/features/reference.pt: no reference statistics" in err and "run `genpipe features` again" in err
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "figures").exists()
