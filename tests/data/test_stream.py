"""The sharded train path: which shards each rank reads, the batches as a pure function of
(seed, step, rank, world size), the loader's bound on what it holds, and S3 copies."""

from __future__ import annotations

import json
from collections import Counter

import boto3
import numpy as np
import pytest
import torch

from genpipe.config import load_config
from genpipe.data import load_split, prepare_dataset
from genpipe.data.stream import ShardedDataset, ShardPlan, ShardStream, choose_data_path
from genpipe.errors import InputError

SMALL_SHARDS = ["data.shard_rows=128", "train.shuffle_shards=2", "train.prefetch_shards=1"]


@pytest.fixture
def sharded(project):
    """The tiny digits in 15 shards of 128 rows: 12 hold train rows (the 12th only 31)."""
    cfg = load_config("params.yaml", SMALL_SHARDS)
    prepare_dataset(cfg)
    return cfg, ShardedDataset(cfg.paths.data, cfg.storage)


def _rows(pixels, labels) -> Counter:
    """Each row (its pixels and label) with its multiplicity."""
    return Counter(bytes(memoryview(np.ascontiguousarray(p))) + bytes([int(y)]) for p, y in zip(pixels, labels))


def test_each_rank_reads_only_its_shards_and_any_step_resumes_the_same_batches(sharded):
    cfg, dataset = sharded
    plan = ShardPlan.build(dataset, cfg.train, 2, cfg.seed)
    per_epoch, epochs = plan.batches_per_epoch, 3
    assert dataset.split_rows("train")[10:13] == [128, 31, 0] and len(plan.shards) == 12
    assert per_epoch == (31 + 5 * 128) // 16  # the 6 smallest shards, whichever a rank is dealt
    streams = [ShardStream(dataset, plan, r, cfg.train.prefetch_shards) for r in range(2)]
    full = [list(s.batches(0, epochs * per_epoch)) for s in streams]
    assert all(x.shape == (16, 1, 8, 8) and y.shape == (16,) for run in full for x, y in run)

    train_paths = {s["path"] for s in plan.shards}
    for epoch in range(1, epochs):  # the two newest epochs the streams report
        deal = [{plan.shards[i]["path"] for i in plan.assignment(epoch)[r]} for r in range(2)]
        opened = [{p for e, p in s.report()["opened"] if e == epoch} for s in streams]
        assert opened == deal and not opened[0] & opened[1] and opened[0] | opened[1] == train_paths
        for r in range(2):  # an epoch's rows are rows of the rank's own shards, none twice
            x = torch.cat([b[0] for b in full[r][epoch * per_epoch : (epoch + 1) * per_epoch]])
            y = torch.cat([b[1] for b in full[r][epoch * per_epoch : (epoch + 1) * per_epoch]])
            own = Counter()
            for i in plan.assignment(epoch)[r]:
                own += _rows(*dataset.read_rows(plan.shards[i], "train"))
            assert not _rows(x.numpy(), y.numpy()) - own
    assert plan.assignment(1) != plan.assignment(2)  # each epoch deals the shards anew

    for start in (5, per_epoch - 1, per_epoch + 3):  # mid-window, an epoch's last batch, the next epoch
        again = list(ShardStream(dataset, plan, 1, cfg.train.prefetch_shards).batches(start, epochs * per_epoch))
        assert len(again) == len(full[1]) - start
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, full[1][start:]))
    other_seed = ShardPlan.build(dataset, cfg.train, 2, cfg.seed + 1)
    assert not torch.equal(next(ShardStream(dataset, other_seed, 1, 1).batches(0, 1))[0], full[1][0][0])


def test_the_loader_never_holds_more_than_its_window_and_queue(sharded):
    import time  # only here: waiting for the reader thread to fill what it may

    cfg, dataset = sharded
    tc = cfg.train.model_copy(update={"shuffle_shards": 3})
    plan = ShardPlan.build(dataset, tc, 1, cfg.seed)  # one rank: all 12 train shards each epoch
    stream = ShardStream(dataset, plan, 0, prefetch_shards=2)
    bound = tc.shuffle_shards + 2 + 1  # one window, the queue, the shard the reader holds waiting for room
    total = 2 * sum(plan.rows)  # two epochs, each shard read once in each
    it = stream.batches(0, 2 * plan.batches_per_epoch)
    next(it)  # a consumer that stops: the reader reads on until it may hold no more (or has read all)
    deadline = time.monotonic() + 30
    while stream.held_shards < bound and stream.rows_read < total and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.held_shards == bound and stream.held_rows <= bound * 128
    for _ in it:
        pass
    report = stream.report()
    assert stream.held_shards == stream.held_rows == 0  # all released at the end
    assert report["peak_shards"] == bound < len(plan.shards) and report["peak_rows"] <= bound * 128 < sum(plan.rows)
    assert report["rows_read"] == total


def test_a_partly_consumed_stream_stops_its_reader(sharded):
    cfg, dataset = sharded
    plan = ShardPlan.build(dataset, cfg.train, 1, cfg.seed)
    stream = ShardStream(dataset, plan, 0, prefetch_shards=1)
    it = stream.batches(0, 10 * plan.batches_per_epoch)
    next(it)
    it.close()  # what the loop does when it stops early (a diverged loss, an interrupt)
    import threading  # only here: the one test that looks at the threads

    assert not [t for t in threading.enumerate() if t.name.startswith("genpipe-shards")]
    assert stream.report()["rows_read"] <= 4 * 128  # it did not read on to the end


def test_the_path_is_chosen_by_the_decoded_size_and_plans_that_cannot_work_are_one_line(sharded):
    cfg, dataset = sharded
    card = dataset.card  # 1439 train images of 1x8x8: 92 kB
    auto = cfg.train.model_copy(update={"data_path": "auto"})
    assert choose_data_path(auto, card) == "memory"  # the default limit
    assert choose_data_path(auto.model_copy(update={"memory_limit_mb": 0.05}), card) == "shards"
    assert choose_data_path(auto.model_copy(update={"memory_limit_mb": 0.05}), card, fitted=True) == "memory"
    assert choose_data_path(auto.model_copy(update={"data_path": "shards"}), card) == "shards"
    counted = dataset.split_rows("train")
    for shard, n in zip(dataset.card["shards"], counted):  # a card that lists each shard's split rows is read, not the shards
        shard["splits"] = {"train": n + 1}
    assert dataset.split_rows("train") == [n + 1 for n in counted]
    for shard in dataset.card["shards"]:
        del shard["splits"]
    with pytest.raises(InputError, match=r"train.num_workers: 13 workers need .* has 12 \(prepare with a smaller data.shard_rows\)"):
        ShardPlan.build(dataset, cfg.train, 13, 0)
    with pytest.raises(InputError, match=r"train.batch_size: 200 per worker exceeds the 159 train rows"):
        ShardPlan.build(dataset, cfg.train.model_copy(update={"batch_size": 200}), 6, 0)  # 31 + 128


def test_a_changed_shard_is_one_line_naming_it_when_the_stream_reaches_it(sharded, project):
    cfg, dataset = sharded
    plan = ShardPlan.build(dataset, cfg.train, 1, cfg.seed)
    victim = plan.shards[plan.assignment(0)[0][0]]["path"]  # the first shard rank 0 reads
    path = project / "data/prepared" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{victim}: sha256 does not match .*card.json$"):
        next(ShardStream(dataset, plan, 0, 1).batches(0, 5))
    with pytest.raises(InputError, match=rf"{victim}: sha256 does not match"):
        dataset.verify()  # the driver's check before a run exists


def test_a_copy_on_s3_streams_the_same_batches(sharded, project, bucket):
    cfg, local = sharded
    s3 = boto3.client("s3")
    for f in sorted((project / "data/prepared").iterdir()):
        s3.put_object(Bucket=bucket, Key=f"copies/prepared/{f.name}", Body=f.read_bytes())
    remote = ShardedDataset(f"s3://{bucket}/copies/prepared", cfg.storage)
    assert remote.card == local.card and remote.split_rows("train") == local.split_rows("train")
    plans = [ShardPlan.build(d, cfg.train, 2, cfg.seed) for d in (local, remote)]
    a, b = (list(ShardStream(d, p, 1, 1).batches(0, 30)) for d, p in zip((local, remote), plans))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    whole, held = remote.load_split("train"), load_split(cfg.paths.data, "train")  # the memory path from a copy
    assert torch.equal(whole.images, held.images) and torch.equal(whole.labels, held.labels)

    card = json.loads((project / "data/prepared/card.json").read_text())
    card["shards"][0]["sha256"] = "0" * 64
    s3.put_object(Bucket=bucket, Key="copies/prepared/card.json", Body=json.dumps(card).encode())
    with pytest.raises(InputError, match=rf"^s3://{bucket}/copies/prepared/shard-00000.parquet: sha256 does not match"):
        ShardedDataset(f"s3://{bucket}/copies/prepared", cfg.storage).read_rows(card["shards"][0], "train")
    with pytest.raises(InputError, match=rf"^s3://{bucket}/nowhere/card.json: no prepared dataset here"):
        ShardedDataset(f"s3://{bucket}/nowhere", cfg.storage)
