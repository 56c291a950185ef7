"""Sources: what each returns is the data it claims to be, checked against how it was made."""

from __future__ import annotations

import numpy as np
import pytest

from genpipe.config import load_config
from genpipe.data import load_split, prepare_dataset
from genpipe.data.sources import COLOURS, SHAPES, load_shapes_source, shape_area


def _shapes(n: int, side: int, seed: int = 0, overrides: tuple[str, ...] = ()):
    cfg = load_config("params.yaml", ["data.source=shapes", f"data.resolution={side}", f"data.shapes.num_images={n}",
                                      *overrides])
    return load_shapes_source(cfg.data, seed)


def test_shapes_are_seeded(project):
    a, b, c = _shapes(50, 16, 0), _shapes(50, 16, 0), _shapes(50, 16, 1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (50, 3, 16, 16) and a.images.dtype == np.uint8


def test_each_image_is_its_factors(project):
    """Every image shows one shape in its factor's colour, covering the shape's area at its
    scale and centred where its position says: the pixels against the generating model."""
    side = 32
    src = _shapes(300, side)
    f = src.factors
    assert np.array_equal(src.labels, f["shape"]) and src.class_names == SHAPES
    rgb = np.array(list(COLOURS.values()), dtype=np.float64)
    grid = (np.arange(side) + 0.5) / side
    for i in range(len(src.labels)):
        colour = rgb[f["colour"][i]]
        img = src.images[i].astype(np.float64)  # (3, H, W)
        ch = int(np.argmax(colour))
        coverage = img[ch] / colour[ch]  # 1 inside the shape, 0 outside, between on its edges
        inside = coverage > 0.99
        assert inside.any(), i
        # inside the shape the pixel is the colour itself, in every channel
        assert np.abs(img[:, inside] - colour[:, None]).max() <= 2, i
        area = coverage.sum() / side**2
        assert area == pytest.approx(shape_area(SHAPES[f["shape"][i]], f["scale"][i]), abs=0.012), i
        cx = (coverage.sum(axis=0) * grid).sum() / coverage.sum()
        assert cx == pytest.approx(f["x"][i], abs=0.02), i
        if SHAPES[f["shape"][i]] != "triangle":  # a triangle's centroid is below its box's centre
            cy = (coverage.sum(axis=1) * grid).sum() / coverage.sum()
            assert cy == pytest.approx(f["y"][i], abs=0.02), i
    # the factors are drawn uniformly: each shape and colour near its share (within 4 sigma)
    n = len(src.labels)
    for values, k in ((f["shape"], len(SHAPES)), (f["colour"], len(COLOURS))):
        counts = np.bincount(values, minlength=k)
        assert np.abs(counts - n / k).max() < 4 * np.sqrt(n * (1 / k) * (1 - 1 / k)), counts
    assert f["scale"].min() >= 0.3 and f["scale"].max() <= 0.7
    assert np.all(f["x"] >= f["scale"] / 2) and np.all(f["x"] <= 1 - f["scale"] / 2)


def test_prepare_shapes_in_colour(project):
    cfg = load_config("params.yaml", ["data.source=shapes", "data.resolution=16", "data.shapes.num_images=300"])
    card = prepare_dataset(cfg)
    assert card["source"] == "shapes" and card["shape"] == [3, 16, 16]
    assert card["class_names"] == list(SHAPES) and sum(card["counts"].values()) == 300
    train = load_split(cfg.paths.data, "train", verify=True)
    assert train.images.shape[1:] == (3, 16, 16)
    assert set(train.labels.unique().tolist()) == {0, 1, 2}


def test_shape_scales_out_of_order_are_one_line(project):
    from genpipe.errors import InputError

    with pytest.raises(InputError, match=r"data.shapes: .*min_scale \(0.8\) must not exceed max_scale \(0.5\)"):
        load_config("params.yaml", ["data.shapes.min_scale=0.8", "data.shapes.max_scale=0.5"])


# -- mnist: IDX files ---------------------------------------------------------------------------


def _idx(values: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in values.shape)
    return header + values.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train: int = 60, n_test: int = 20, gz: bool = False, prefix: str = ""):
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    data = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = np.arange(n) % 10
        data[part] = (images, labels)
        for kind, values, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}{part}-{kind}-idx{dims}-ubyte"
            raw = _idx(values)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return data


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_idx_files_keep_their_test_split(project, gz):
    data = _write_mnist(project / "idx", gz=gz, prefix="fashion-" if gz else "")
    cfg = load_config("params.yaml", ["data.source=mnist", f"data.path={project / 'idx'}", "data.resolution=28"])
    card = prepare_dataset(cfg)
    assert card["shape"] == [1, 28, 28] and card["num_classes"] == 10
    # val: 10 % of each class's 6 train images, rounded (stratified); test: the 20 t10k images
    assert card["counts"] == {"train": 50, "val": 10, "test": 20}
    test = load_split(cfg.paths.data, "test", verify=True)
    want = {data["t10k"][0][i].tobytes(): data["t10k"][1][i] for i in range(20)}
    got = {test.images[i, 0].numpy().tobytes(): int(test.labels[i]) for i in range(len(test))}
    assert len(test) == 20 and got == want  # the test split is exactly the t10k images, with their labels
    train = load_split(cfg.paths.data, "train")
    train_set = {data["train"][0][i].tobytes() for i in range(60)}
    assert all(train.images[i, 0].numpy().tobytes() in train_set for i in range(len(train)))


def test_emnist_files_are_turned_upright(project):
    """EMNIST stores each image transposed; files named emnist-* are transposed back, others kept."""
    data = _write_mnist(project / "emnist", prefix="emnist-letters-")
    _write_mnist(project / "plain")
    for folder, flip in (("emnist", True), ("plain", False)):
        cfg = load_config("params.yaml", ["data.source=mnist", f"data.path={project / folder}", "data.resolution=28"])
        card = prepare_dataset(cfg)
        test = load_split(cfg.paths.data, "test")
        want = {(d.T if flip else d).tobytes() for d in data["t10k"][0]}
        assert {img[0].numpy().tobytes() for img in test.images} == want, folder
        assert ("EMNIST" in card["description"]) == flip


@pytest.mark.parametrize("breakage", ["no path", "no folder", "a missing file", "bad magic", "truncated",
                                      "labels do not match", "not gzip"])
def test_bad_idx_files_are_one_line_naming_the_file(project, capsys, breakage):
    from genpipe.cli import main

    folder = project / "idx"
    _write_mnist(folder, gz=breakage == "not gzip")
    culprit = str(folder)
    if breakage == "no folder":
        folder = project / "nowhere"
        culprit = str(folder)
    elif breakage == "a missing file":
        (folder / "t10k-labels-idx1-ubyte").unlink()
        culprit = "t10k-labels-idx1-ubyte"
    elif breakage == "bad magic":
        path = folder / "train-images-idx3-ubyte"
        raw = bytearray(path.read_bytes())
        raw[2] = 0x0D  # float elements
        path.write_bytes(bytes(raw))
        culprit = str(path)
    elif breakage == "truncated":
        path = folder / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
        culprit = str(path)
    elif breakage == "labels do not match":
        (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(19)))
        culprit = "20 t10k images but 19 labels"
    elif breakage == "not gzip":
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(b"not gzip at all")
        culprit = str(path)
    argv = ["prepare", "-S", "data.source=mnist", "-S", "data.resolution=28"]
    if breakage != "no path":
        argv += ["-S", f"data.path={folder}"]
    else:
        culprit = "data.path"
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and culprit in err, err
    assert not (project / "data").exists()


# -- cifar: python batches ----------------------------------------------------------------------


def _write_cifar(folder, hundred: bool = False, tar: bool = False):
    """CIFAR batches as the official pickles hold them: a dict of bytes keys, data (N, 3072) uint8."""
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(4)
    key = b"fine_labels" if hundred else b"labels"
    names = (("train", 40), ("test", 10)) if hundred else (("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 10))
    files, data = {}, {}
    for name, n in names:
        images = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        labels = [i % (20 if hundred else 10) for i in range(n)]
        data[name] = (images.reshape(n, 3, 32, 32), labels)
        files[name] = pickle.dumps({b"batch_label": name.encode(), key: labels, b"data": images}, protocol=2)
    meta = ("meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}) if hundred else (
        "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    files[meta[0]] = pickle.dumps(meta[1], protocol=2)
    folder.mkdir(parents=True, exist_ok=True)
    if tar:
        path = folder / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as t:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                t.addfile(info, io.BytesIO(raw))
        return path, data
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return folder, data


@pytest.mark.parametrize(("hundred", "tar"), [(False, False), (False, True), (True, False)],
                         ids=["cifar-10 folder", "cifar-10 tar.gz", "cifar-100 folder"])
def test_cifar_batches_in_colour_with_their_test_split(project, hundred, tar):
    path, data = _write_cifar(project / "cifar", hundred, tar)
    cfg = load_config("params.yaml", ["data.source=cifar", f"data.path={path}", "data.resolution=32"])
    card = prepare_dataset(cfg)
    assert card["shape"] == [3, 32, 32] and card["counts"]["test"] == 10
    assert sum(card["counts"].values()) == 50
    assert card["class_names"][:2] == (["c0", "c1"] if hundred else ["class0", "class1"])
    test = load_split(cfg.paths.data, "test", verify=True)
    images, labels = data["test" if hundred else "test_batch"]
    want = {images[i].tobytes(): labels[i] for i in range(10)}
    assert {test.images[i].numpy().tobytes(): int(test.labels[i]) for i in range(len(test))} == want


def test_a_pickle_that_names_code_is_refused_not_run(project, capsys):
    """A CIFAR 'batch' that would call os.system when unpickled: one line, and nothing ran."""
    import os
    import pickle

    from genpipe.cli import main

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {project / 'pwned'}",)

    folder, _ = _write_cifar(project / "cifar")
    (folder / "data_batch_2").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "-S", "data.source=cifar", "-S", f"data.path={folder}", "-S", "data.resolution=32"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "data_batch_2: not a CIFAR batch" in err, err
    assert not (project / "pwned").exists() and not (project / "data").exists()


@pytest.mark.parametrize("breakage", ["truncated", "no test batch", "not an archive", "wrong data shape"])
def test_bad_cifar_batches_are_one_line(project, capsys, breakage):
    import pickle

    from genpipe.cli import main

    folder, _ = _write_cifar(project / "cifar")
    path = folder
    if breakage == "truncated":
        raw = (folder / "data_batch_1").read_bytes()
        (folder / "data_batch_1").write_bytes(raw[: len(raw) // 2])
        culprit = "data_batch_1"
    elif breakage == "no test batch":
        (folder / "test_batch").unlink()
        culprit = "no CIFAR test batch"
    elif breakage == "not an archive":
        path = project / "cifar.tar.gz"
        path.write_bytes(b"not gzip")
        culprit = str(path)
    else:
        (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10}))
        culprit = "test_batch: not a CIFAR batch"
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "-S", "data.source=cifar", "-S", f"data.path={path}", "-S", "data.resolution=32"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and culprit in err, err
    assert not (project / "data").exists()
