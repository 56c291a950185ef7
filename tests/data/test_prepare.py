"""The prepare stage: digits -> stratified split -> Parquet shards + card, and reading back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from genpipe.config import load_config
from genpipe.data import load_split, prepare_dataset, read_card
from genpipe.data.prepare import split_indices
from genpipe.data.sources import load_digits_source
from genpipe.errors import InputError
from genpipe.storage import sha256_file


def test_prepare_writes_shards_and_card(project):
    cfg = load_config("params.yaml", ["data.shard_rows=500"])
    card = prepare_dataset(cfg)
    data_dir = project / "data/prepared"
    assert json.loads((data_dir / "card.json").read_text()) == card
    assert card["shape"] == [1, 8, 8] and card["num_classes"] == 10
    assert sum(card["counts"].values()) == 1797
    assert [s["rows"] for s in card["shards"]] == [500, 500, 500, 297]
    for shard in card["shards"]:
        assert sha256_file(data_dir / shard["path"]) == shard["sha256"]
    # stratified: every class appears in every split, ~10% of it in test
    for split, counts in card["label_counts"].items():
        assert len(counts) == 10 and min(counts) > 0, split
    assert card["counts"]["test"] == pytest.approx(180, abs=5)
    # every original image exactly once across the splits
    indices = np.concatenate([pq.read_table(data_dir / s["path"])["index"].to_numpy() for s in card["shards"]])
    assert sorted(indices.tolist()) == list(range(1797))


def test_pixels_round_trip_at_native_resolution(project):
    cfg = load_config("params.yaml")  # TINY: resolution 8 = the source's own
    prepare_dataset(cfg)
    src = load_digits_source(cfg.data)
    split = load_split(cfg.paths.data, "test", verify=True)
    assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 8, 8)
    assert int(split.images.max()) == 255 and int(split.images.min()) == 0
    # each test image is one of the source images, with its label
    table = pq.read_table(project / "data/prepared" / read_card(cfg.paths.data)["shards"][0]["path"])
    first = table.to_pylist()[0]
    assert np.array_equal(np.frombuffer(first["pixels"], np.uint8).reshape(1, 8, 8), src.images[first["index"]])
    assert first["label"] == src.labels[first["index"]]


def test_resolution_upsamples(project):
    card = prepare_dataset(load_config("params.yaml", ["data.resolution=16"]))
    assert card["shape"] == [1, 16, 16]
    assert load_split("data/prepared", "train").images.shape[1:] == (1, 16, 16)


def test_split_is_deterministic_given_the_seed():
    labels = np.repeat(np.arange(10), 50)
    a = split_indices(labels, 0.1, 0.2, seed=3)
    assert np.array_equal(a, split_indices(labels, 0.1, 0.2, seed=3))
    assert not np.array_equal(a, split_indices(labels, 0.1, 0.2, seed=4))
    assert (a == "test").sum() == 100 and (a == "val").sum() == 50


def test_same_seed_gives_the_same_dataset_hash(project):
    first = prepare_dataset(load_config("params.yaml"))["sha256"]
    assert prepare_dataset(load_config("params.yaml"))["sha256"] == first
    assert prepare_dataset(load_config("params.yaml", ["seed=1"]))["sha256"] != first


def test_tampered_shard_and_missing_dataset_are_input_errors(project):
    with pytest.raises(InputError, match="run `genpipe prepare` first"):
        load_split("data/prepared", "train")
    card = prepare_dataset(load_config("params.yaml"))
    shard = project / "data/prepared" / card["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InputError, match="sha256 does not match"):
        load_split("data/prepared", "train", verify=True)


def test_failed_prepare_leaves_the_previous_dataset(project, monkeypatch):
    card = prepare_dataset(load_config("params.yaml"))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("genpipe.data.prepare.pq.write_table", broken)
    with pytest.raises(OSError):
        prepare_dataset(load_config("params.yaml", ["seed=5"]))
    assert read_card("data/prepared") == card
    assert [p.name for p in (project / "data").iterdir()] == ["prepared"]  # no temp folder left
