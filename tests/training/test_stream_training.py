"""Training on the sharded path (the train split past train.memory_limit_mb): the same loop, the
same determinism and bit-exact resume, and under Ray Train each worker reading only its shards."""

from __future__ import annotations

import sys

import boto3
import pytest
import torch
from mlflow.tracking import MlflowClient

from genpipe.artifacts import load_checkpoint
from genpipe.config import load_config
from genpipe.data import prepare_dataset
from genpipe.data.stream import ShardedDataset, ShardPlan
from genpipe.training import train_family
from tests.conftest import train_killed_after_first_checkpoint

# 92 kB of decoded train pixels against a 10 kB limit: `auto` streams; 15 shards, 12 with train rows
STREAMED = ["train.memory_limit_mb=0.01", "data.shard_rows=128"]


def _weights(path):
    return load_checkpoint(path)["model"]


def _runs(uri: str) -> int:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("genpipe")
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id], max_results=10_000))


def _never(*args, **kwargs):
    raise AssertionError("the whole split was loaded")


def test_streamed_training_is_deterministic_and_resumes_bit_exactly(project, monkeypatch, mlflow_uri):
    cfg = load_config("params.yaml", STREAMED)
    prepare_dataset(cfg)
    monkeypatch.setattr(sys.modules["genpipe.training.stage"], "load_split", _never)  # neither the pre-flight
    monkeypatch.setattr(sys.modules["genpipe.training.fit"], "load_split", _never)  # nor the loop holds the split
    whole = train_family(cfg, "vae")
    state = load_checkpoint(whole.checkpoint)
    assert state["meta"]["data_path"] == "shards" and state["meta"]["data_reads"][0]["path"] == "shards"
    assert MlflowClient(mlflow_uri).get_run(whole.run_id).data.params["ran.data_path"] == "shards"
    expected = _weights(whole.checkpoint)
    again = train_family(cfg, "vae")
    assert again.losses == whole.losses and all(torch.equal(expected[k], v) for k, v in _weights(again.checkpoint).items())

    train_killed_after_first_checkpoint(monkeypatch, cfg, "vae")  # at step 20
    assert load_checkpoint(project / "models/vae/last.pt")["step"] == 20
    resumed = train_family(cfg, "vae", resume=True)
    got = _weights(resumed.checkpoint)
    assert all(torch.equal(expected[k], v) for k, v in got.items())  # bit-identical to the uninterrupted run

    other = train_family(load_config("params.yaml", [*STREAMED, "seed=1"]), "vae")
    assert other.losses["loss"] != whole.losses["loss"]


@pytest.mark.ray
def test_two_ray_workers_each_read_only_their_shards_from_an_s3_copy(project, ray_cluster, mlflow_uri, bucket):
    """The prepared dataset copied to S3, train.data_uri pointing there: each of 2 Ray Train
    workers reads its own shards from the copy, the two sets disjoint and covering the train shards."""
    local = load_config("params.yaml", STREAMED)
    prepare_dataset(local)
    s3 = boto3.client("s3")
    for f in sorted((project / "data/prepared").iterdir()):
        s3.put_object(Bucket=bucket, Key=f"prepared/{f.name}", Body=f.read_bytes())
    uri = f"s3://{bucket}/prepared"
    cfg = load_config("params.yaml", [*STREAMED, "train.runner=ray", "train.num_workers=2", "train.storage_path=ray",
                                      f"train.data_uri={uri}"])
    out = train_family(cfg, "vae")

    meta = load_checkpoint(out.checkpoint)["meta"]
    assert meta["data_path"] == "shards" and meta["world_size"] == 2
    reads = meta["data_reads"]
    assert [r["rank"] for r in reads] == [0, 1] and all(r["source"] == uri for r in reads)
    opened = [{path for _, path in r["opened"]} for r in reads]
    plan = ShardPlan.build(ShardedDataset(cfg.paths.data, cfg.storage), cfg.train, 2, cfg.seed)
    for rank in range(2):  # what the plan deals this rank for steps 0-40: the windows it needed, no other
        assert opened[rank] == {plan.shards[i]["path"] for _, _, ids, _, _ in plan.reads(rank, 0, 40) for i in ids}
    assert not opened[0] & opened[1]
    assert opened[0] | opened[1] == {s["path"] for s in plan.shards}  # all 12 shards with train rows
    bound = cfg.train.shuffle_shards + cfg.train.prefetch_shards + 1
    assert all(0 < r["peak_shards"] <= bound for r in reads)


def test_streamed_inputs_that_cannot_work_fail_before_a_run_exists(project, mlflow_uri, bucket):
    """A shard Parquet cannot read (its hash updated to match) and an S3 copy of another dataset:
    one line each from the driver's checks, and no MLflow run."""
    import json

    from genpipe.errors import InputError
    from genpipe.storage import sha256_file

    cfg = load_config("params.yaml", STREAMED)
    card = prepare_dataset(cfg)
    s3 = boto3.client("s3")
    for f in sorted((project / "data/prepared").iterdir()):
        body = f.read_bytes()
        if f.name == "card.json":  # the copy of a dataset prepared otherwise
            body = json.dumps({**json.loads(body), "sha256": "f" * 64}).encode()
        s3.put_object(Bucket=bucket, Key=f"old/{f.name}", Body=body)
    before = _runs(mlflow_uri)
    with pytest.raises(InputError, match=rf"^train.data_uri: s3://{bucket}/old holds dataset ffffffffffff, not "
                                         rf"{card['sha256'][:12]} of data/prepared; copy the prepared dataset there again$"):
        train_family(load_config("params.yaml", [*STREAMED, f"train.data_uri=s3://{bucket}/old"]), "vae")

    shard = project / "data/prepared" / card["shards"][3]["path"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    card["shards"][3]["sha256"] = sha256_file(shard)
    (project / "data/prepared/card.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=rf"{shard.name}: not a readable shard of this dataset"):
        train_family(cfg, "vae")
    assert _runs(mlflow_uri) == before and not (project / "models").exists()
