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
