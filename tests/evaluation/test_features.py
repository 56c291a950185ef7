"""The feature networks of the distribution metrics: the domain classifier and the FID Inception."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from genpipe.config import load_config
from genpipe.data import load_split, prepare_dataset
from genpipe.errors import InputError
from genpipe.evaluation.features import (
    DomainClassifier,
    Extractor,
    load_extractor,
    random_shift,
    train_feature_net,
)
from genpipe.evaluation.inception import InceptionV3FID, load_fid_inception
from genpipe.storage import sha256_file
from tests.conftest import write_params

# 16x16 digits, a narrow classifier, a high step size: 300 steps take ~4 s on one CPU thread
# and reach ~0.93 test accuracy (measured 0.927 at seed 0; the default config gets 0.994).
SMALL = ["data.resolution=16", "features.steps=300", "features.width=8", "features.feature_dim=16",
         "features.batch_size=32", "features.lr=1e-2"]
MIN_TEST_ACCURACY = 0.8  # chance is 0.1


def _config(folder, *overrides):
    return load_config(folder / "params.yaml", overrides=[
        f"paths.data={folder / 'data'}", f"paths.models={folder / 'models'}", *SMALL, *overrides,
    ])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prepared 16x16 digits dataset and a domain classifier trained on it (shared, read only)."""
    folder = tmp_path_factory.mktemp("features")
    write_params(folder)
    cfg = _config(folder)
    prepare_dataset(cfg)
    card = train_feature_net(cfg, progress=False)
    return cfg, card


# ----------------------------------------------------------------------------- domain classifier


def test_training_writes_weights_and_card(trained):
    cfg, card = trained
    folder = cfg.paths.models / "features"
    assert json.loads((folder / "card.json").read_text()) == card
    sha = sha256_file(folder / "classifier.pt")
    assert card["weights_sha256"] == sha and card["id"] == f"domain-cnn-{sha[:12]}"
    assert card["architecture"] == {"name": "DomainClassifier", "width": 8, "feature_dim": 16,
                                    "input_shape": [1, 16, 16], "num_classes": 10}
    assert card["feature_dim"] == 16 and card["steps"] == 300 and card["val_split"] == "val"
    assert card["dataset_sha256"] == load_split(cfg.paths.data, "test").card["sha256"]
    assert card["seconds"] > 0 and 1 <= card["best_step"] <= 300
    # the real data's reference statistics beside it (tests/evaluation/test_reference.py)
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "classifier.pt", "reference.json", "reference.pt"]
    assert card["test_accuracy"] > MIN_TEST_ACCURACY and card["val_accuracy"] > MIN_TEST_ACCURACY


def test_extractor_features_and_probs(trained):
    cfg, card = trained
    ext = load_extractor(cfg)
    assert isinstance(ext, Extractor) and ext.id == card["id"]
    assert ext.num_features == 16 and ext.num_classes == 10
    test = load_split(cfg.paths.data, "test")
    feats = ext.features(test.images, batch_size=64)
    assert feats.shape == (len(test), 16) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    assert torch.equal(feats, ext.features(test.images, batch_size=64))  # deterministic
    assert torch.equal(feats, load_extractor(cfg).features(test.images, batch_size=64))  # and so is loading
    probs = ext.probs(test.images, batch_size=64)
    assert probs.shape == (len(test), 10) and probs.dtype == torch.float64
    assert torch.allclose(probs.sum(1), torch.ones(len(test), dtype=torch.float64))
    # the extractor is the network that was scored: its argmax gives the card's accuracy
    acc = (probs.argmax(1) == test.labels).double().mean().item()
    assert acc == pytest.approx(card["test_accuracy"])
    f2, p2 = ext.features_and_probs(test.images, batch_size=64)
    assert torch.equal(f2, feats) and torch.allclose(p2, probs)
    with pytest.raises(InputError, match=r"takes \[1, 16, 16\] images"):
        ext.features(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ext.features(test.images.float())


def test_training_is_deterministic_per_seed(trained, tmp_path):
    cfg, _ = trained
    shas = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):  # 40 steps each
        other = cfg.model_copy(update={"seed": seed, "paths": cfg.paths.model_copy(update={"models": tmp_path / name}),
                                       "features": cfg.features.model_copy(update={"steps": 40})})
        shas.append(train_feature_net(other, progress=False)["weights_sha256"])
    assert shas[0] == shas[1] != shas[2]


def test_empty_val_split_falls_back_to_train(tmp_path):
    write_params(tmp_path)
    cfg = _config(tmp_path, "data.val_fraction=0.0", "features.steps=20")
    prepare_dataset(cfg)
    card = train_feature_net(cfg, progress=False)
    assert card["val_split"] == "train" and card["num_images"]["val"] == 0


def test_missing_or_tampered_network_is_an_input_error(trained, tmp_path):
    cfg, _ = trained
    other = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"models": tmp_path / "models"})})
    with pytest.raises(InputError, match="no feature network; run `genpipe features` first"):
        load_extractor(other)
    shutil.copytree(cfg.paths.models / "features", tmp_path / "models" / "features")
    assert load_extractor(other).id == load_extractor(cfg).id
    weights = tmp_path / "models" / "features" / "classifier.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"classifier\.pt: sha256 does not match"):
        load_extractor(other)
    weights.unlink()
    with pytest.raises(InputError, match=r"classifier\.pt: no feature network"):
        load_extractor(other)


def test_classifier_shapes_and_shift():
    for shape in ((1, 16, 16), (3, 32, 32), (1, 64, 64), (1, 8, 8)):
        net = DomainClassifier(shape, 7, width=4, feature_dim=5)
        x = torch.zeros(2, *shape)
        assert net.features(x).shape == (2, 5) and net(x).shape == (2, 7)
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    y = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and set(y.unique().tolist()) <= set(x.unique().tolist())
    # one bright centre pixel, 200 images: each comes back translated by its own offset in
    # [-1, 1]^2 (the pixel moves, nothing else appears), and all nine offsets occur
    dot = torch.zeros(200, 1, 5, 5)
    dot[:, :, 2, 2] = 1.0
    moved = random_shift(dot, 1, torch.Generator().manual_seed(1))
    assert torch.equal(moved.sum((1, 2, 3)), torch.ones(200))
    where = {divmod(int(i), 5) for i in moved.flatten(1).argmax(1)}
    assert where == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}


# ----------------------------------------------------------------------------- FID Inception


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A random-weight state dict of the FID Inception (~95 MB), as the real file would be laid out."""
    torch.manual_seed(0)
    state = InceptionV3FID().state_dict()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(state, path)
    return path, state


def test_inception_layout_matches_torchvision_without_aux_logits():
    net = InceptionV3FID()
    keys = list(net.state_dict())
    # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and
    # with a 1008-way fc (+8 * 2049) that is 23,850,960
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    assert len(keys) == 566
    assert keys[:6] == [f"Conv2d_1a_3x3.{k}" for k in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                                        "bn.running_var", "bn.num_batches_tracked")]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    blocks = {k.split(".")[0] for k in keys}
    assert blocks == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                      "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                      "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"}
    assert "Mixed_7c.branch3x3dbl_3b.conv.weight" in keys and "Mixed_6e.branch7x7dbl_5.bn.bias" in keys
    # a state dict saved without num_batches_tracked (older torch) loads too
    old = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    InceptionV3FID().load_state_dict(old, strict=True)


def test_inception_extractor_on_small_images(trained, inception_file):
    cfg, _ = trained
    path, state = inception_file
    icfg = cfg.model_copy(update={"features": cfg.features.model_copy(update={"extractor": "inception",
                                                                              "inception_weights": path})})
    ext = load_extractor(icfg)
    assert ext.id == f"inception-v3-{sha256_file(path)[:12]}"
    assert ext.num_features == 2048 and ext.num_classes == 1008
    images = load_split(cfg.paths.data, "test").images[:3]
    feats, probs = ext.features_and_probs(images, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    assert probs.shape == (3, 1008) and torch.allclose(probs.sum(1), torch.ones(3, dtype=torch.float64))
    # grey images are the same image repeated over RGB; the weights are the file's
    net = InceptionV3FID()
    net.load_state_dict(state)
    rgb = (images[:1].repeat(1, 3, 1, 1).float() / 127.5 - 1.0)
    with torch.no_grad():
        assert torch.allclose(net.eval().features(rgb).double(), feats[:1], rtol=1e-4, atol=1e-10)
    # the IS probabilities: softmax of pool3 @ fc.weight.T (the reference code has no fc bias)
    assert torch.allclose(probs, torch.softmax(feats @ state["fc.weight"].double().T, dim=1), atol=1e-6)


def test_inception_weights_errors(trained, inception_file, tmp_path):
    cfg, _ = trained
    path, state = inception_file

    def with_weights(p):
        return cfg.model_copy(update={"features": cfg.features.model_copy(update={"extractor": "inception",
                                                                                  "inception_weights": p})})

    with pytest.raises(InputError, match="features.inception_weights: not set"):
        load_extractor(with_weights(None))
    with pytest.raises(InputError, match=r"nothing\.pth: no such file"):
        load_extractor(with_weights(tmp_path / "nothing.pth"))
    wrong = dict(state)
    wrong["fc.weight"], wrong["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # an ImageNet-1000 head
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match=r"wrong\.pth: not the FID Inception-v3 weights: .*fc\.weight: \[1000, 2048\]"):
        load_extractor(with_weights(tmp_path / "wrong.pth"))
    torch.save({"blocks.0.0.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "foreign.pth")
    with pytest.raises(InputError, match=r"foreign\.pth: .*keys missing .*unexpected \(first blocks\.0\.0\.conv\.weight\)"):
        load_fid_inception(tmp_path / "foreign.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"junk\.pth: not a readable torch state dict"):
        load_fid_inception(tmp_path / "junk.pth")


def test_the_feature_network_is_the_same_while_another_thread_builds_models(project):
    """In the pipeline the trainings' pre-flights build models beside the feature network's
    training: its weights (and so every metric) must not depend on that."""
    import threading

    from genpipe.config import load_config
    from genpipe.data import prepare_dataset
    from genpipe.evaluation.features import train_feature_net
    from genpipe.models import ImageSpec, get_family
    from genpipe.runtime import isolated_rng

    cfg = load_config("params.yaml", ["features.steps=20"])
    prepare_dataset(cfg)
    alone = train_feature_net(cfg, progress=False)["weights_sha256"]
    stop = threading.Event()

    def build_again_and_again():
        while not stop.is_set():
            with isolated_rng():
                get_family("vae").build(cfg.family("vae"), ImageSpec((1, 8, 8), 10))

    builder = threading.Thread(target=build_again_and_again)
    builder.start()
    try:
        beside = [train_feature_net(cfg, progress=False)["weights_sha256"] for _ in range(3)]
    finally:
        stop.set()
        builder.join()
    assert beside == [alone] * 3
