"""Batch generation into local folders and S3: images, manifest, idempotent re-runs, pre-flight."""

from __future__ import annotations

import hashlib
import io
from urllib.parse import urlparse

import boto3
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genpipe.config import load_config
from genpipe.errors import InputError
from genpipe.generation import MANIFEST_SCHEMA, generate_images, parse_labels
from genpipe.storage import sha256_file


def test_parse_labels():
    assert parse_labels(None, 3, 10) is None
    assert parse_labels("7", 3, 10) == (7, 7, 7)
    assert parse_labels("1,2", 5, 10) == (1, 2, 1, 2, 1)
    assert parse_labels("balanced", 12, 10) == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1)
    with pytest.raises(InputError, match="--labels 12: class 12 is outside 0..9"):
        parse_labels("12", 3, 10)
    with pytest.raises(InputError, match="--labels seven"):
        parse_labels("seven", 3, 10)


def _local_path(uri: str) -> str:
    return urlparse(uri).path


def test_local_generation_manifest_and_idempotent_rerun(in_trained):
    cfg = load_config("params.yaml", ["generate.batch_size=16", "generate.runner=local"])
    res = generate_images(cfg, "vae", n=40, out="gen")
    table = pq.read_table(_local_path(res.manifest_uri))
    assert table.schema.equals(MANIFEST_SCHEMA) and table.num_rows == 40 == res.num_images
    assert table["index"].to_pylist() == list(range(40))
    assert set(table["checkpoint_sha256"].to_pylist()) == {sha256_file(in_trained / "models/vae/checkpoint.pt")}
    for row in table.to_pylist():
        data = open(_local_path(row["image_uri"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
        assert Image.open(io.BytesIO(data)).size == (row["width"], row["height"]) == (8, 8)
        assert row["label"] is None and row["family"] == "vae" and row["run_id"]

    again = generate_images(cfg, "vae", n=40, out="gen")  # the same job: same keys, no new rows
    assert again.job_id == res.job_id
    assert pq.read_table(_local_path(again.manifest_uri))["image_sha256"] == table["image_sha256"]
    other = generate_images(cfg, "vae", n=10, out="gen", seed=1)  # another job: its own manifest
    assert other.job_id != res.job_id
    everything = pads.dataset(str(in_trained / "gen/manifests"), format="parquet").to_table()
    assert everything.num_rows == 50 and len(set(everything["image_uri"].to_pylist())) == 50


def test_s3_generation_64_objects_and_a_manifest_pyarrow_reads(in_trained, bucket, s3_server):
    cfg = load_config("params.yaml", ["generate.runner=local"])
    res = generate_images(cfg, "vae", n=64, out=f"s3://{bucket}/batch/one")
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len([k for k in keys if k.endswith(".png")]) == 64
    assert [k for k in keys if k.endswith(".parquet")] == [f"batch/one/manifests/{res.job_id}.parquet"]

    fs = pafs.S3FileSystem(endpoint_override=s3_server, access_key="genpipe-test", secret_key="genpipe-test-secret", region="us-east-1")
    table = pq.read_table(f"{bucket}/batch/one/manifests/{res.job_id}.parquet", filesystem=fs)
    assert table.num_rows == 64
    for row in table.to_pylist():
        parsed = urlparse(row["image_uri"])
        body = s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
        assert hashlib.sha256(body).hexdigest() == row["image_sha256"]
    assert "genpipe-test-secret" not in str(table.to_pylist())


def test_bad_targets_fail_before_any_image(in_trained, bucket, s3_server, tmp_path):
    cfg = load_config("params.yaml", ["generate.runner=local"])
    with pytest.raises(InputError, match=r"s3://no-such-bucket-1/x: bucket 'no-such-bucket-1' does not exist"):
        generate_images(cfg, "vae", n=8, out="s3://no-such-bucket-1/x")
    with pytest.raises(InputError, match="cannot reach the endpoint"):
        generate_images(load_config("params.yaml", ["storage.endpoint_url=http://127.0.0.1:9", "storage.connect_timeout=1"]), "vae", n=8, out=f"s3://{bucket}/x")
    with pytest.raises(InputError, match="is unconditional"):
        generate_images(cfg, "vae", n=8, out=f"s3://{bucket}/x", labels="7")
    with pytest.raises(InputError, match="run `genpipe train --family vae` first"):
        generate_images(load_config("params.yaml", ["paths.models=elsewhere"]), "vae", n=8, out=f"s3://{bucket}/x")
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket)


@pytest.mark.ray
def test_ray_data_actors_write_the_same_images(in_trained, ray_cluster, bucket):
    local = generate_images(load_config("params.yaml", ["generate.runner=local", "generate.batch_size=8"]), "vae", n=24, out="gen-local")
    remote = generate_images(
        load_config("params.yaml", ["generate.runner=ray", "generate.num_workers=2", "generate.batch_size=8"]),
        "vae", n=24, out=f"s3://{bucket}/ray",
    )
    assert remote.job_id == local.job_id and remote.num_images == 24
    a = pq.read_table(_local_path(local.manifest_uri))
    body = boto3.client("s3").get_object(Bucket=bucket, Key=f"ray/manifests/{remote.job_id}.parquet")["Body"].read()
    b = pq.read_table(io.BytesIO(body))
    assert b["index"].to_pylist() == list(range(24))
    assert a["image_sha256"].to_pylist() == b["image_sha256"].to_pylist()  # same seed, same pixels


def test_an_endpoint_that_never_answers_fails_the_pre_flight_at_its_timeout(in_trained, bucket):
    """It accepts the connection (the kernel does, from the listen backlog) and never replies:
    the pre-flight check waits storage.connect_timeout once, not the job's read timeout and retries."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    cfg = load_config("params.yaml", [f"storage.endpoint_url=http://127.0.0.1:{port}", "storage.connect_timeout=1"])
    outcome: list[BaseException] = []

    def attempt():
        try:
            generate_images(cfg, "vae", n=4, out=f"s3://{bucket}/silent")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(60)  # a bound on a hang, not a speed measurement: botocore's defaults would wait minutes
    silent.close()
    assert not worker.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], InputError)
    assert str(outcome[0]) == (f"s3://{bucket}/silent: the endpoint accepted the connection but did not answer "
                               "within 1 s (storage.connect_timeout)")


def test_a_store_that_fails_mid_job_is_one_line_and_leaves_no_manifest(in_trained, bucket, s3_server, monkeypatch):
    """The endpoint goes away after the first batch: one line naming the object that failed, the
    images already stored stay, no manifest is written; the same job run again completes it."""
    from moto.server import ThreadedMotoServer

    from genpipe.generation.batch import BatchGenerator

    second = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the same in-process buckets
    second.start()
    host, port = second.get_host_and_port()
    cfg = load_config("params.yaml", [f"storage.endpoint_url=http://{host}:{port}", "storage.connect_timeout=1",
                                      "generate.batch_size=8"])
    original = BatchGenerator.generate

    def then_the_endpoint_goes(self, b):
        rows = original(self, b)
        if b == 0:
            second.stop()
        return rows

    monkeypatch.setattr(BatchGenerator, "generate", then_the_endpoint_goes)
    with pytest.raises(InputError, match=rf"^s3://{bucket}/midjob: writing images/[\w-]+/000008.png failed "
                                         r"\(EndpointConnectionError, after retries\); the images stored so far stay "
                                         r"and no manifest was written: run the same job again"):
        generate_images(cfg, "vae", n=16, out=f"s3://{bucket}/midjob")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="midjob/")["Contents"]]
    assert len([k for k in keys if k.endswith(".png")]) == 8 and not [k for k in keys if "manifests/" in k]
    monkeypatch.setattr(BatchGenerator, "generate", original)
    again = generate_images(load_config("params.yaml", ["generate.batch_size=8"]), "vae", n=16, out=f"s3://{bucket}/midjob")
    assert again.num_images == 16


@pytest.mark.ray
def test_a_store_that_fails_mid_job_under_ray_data_is_the_same_one_line(in_trained, ray_cluster, bucket, s3_server):
    """As above, with the images written by Ray Data actors: the actors' error reaches the
    driver as genpipe's line (not Ray's wrapped traceback), the failed job's actors end with it
    (they would hold the cluster's CPUs), and the same job run again in this process completes it."""
    import threading

    from moto.server import ThreadedMotoServer

    second = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the same in-process buckets
    second.start()
    host, port = second.get_host_and_port()
    s3 = boto3.client("s3")
    stopped = threading.Event()

    def stop_after_the_first_image():
        while not stopped.is_set():
            if s3.list_objects_v2(Bucket=bucket, Prefix="raymid/images/").get("KeyCount", 0):
                second.stop()
                stopped.set()
            stopped.wait(0.02)

    watcher = threading.Thread(target=stop_after_the_first_image, daemon=True)
    watcher.start()
    over = ["generate.runner=ray", "generate.num_workers=2", "generate.batch_size=8"]
    cfg = load_config("params.yaml", [*over, f"storage.endpoint_url=http://{host}:{port}", "storage.connect_timeout=1"])
    try:
        with pytest.raises(InputError, match=rf"^s3://{bucket}/raymid: writing images/[\w-]+/\d+.png failed "
                                             r"\(EndpointConnectionError, after retries\); the images stored so far "
                                             r"stay and no manifest was written: run the same job again"):
            generate_images(cfg, "vae", n=400, out=f"s3://{bucket}/raymid")
    finally:
        stopped.set()
        watcher.join()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="raymid/")["Contents"]]
    assert 0 < len([k for k in keys if k.endswith(".png")]) < 400 and not [k for k in keys if "manifests/" in k]
    again = generate_images(load_config("params.yaml", over), "vae", n=400, out=f"s3://{bucket}/raymid")
    assert again.num_images == 400
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix="raymid/manifests/")["Contents"]) == 1
