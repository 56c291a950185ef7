"""Object stores: local folders and S3 (a real HTTP endpoint: moto's server on 127.0.0.1)."""

from __future__ import annotations

import boto3
import pytest
from moto.core import authorization
from moto import settings as moto_settings

from genpipe.config import StorageConfig
from genpipe.errors import InputError
from genpipe.storage.objectstore import LocalStore, S3Store, open_store, safe_key


def test_safe_key_refuses_traversal_and_odd_characters():
    assert safe_key("images", "job-1", "000001.png") == "images/job-1/000001.png"
    assert safe_key("a/b", "c") == "a/b/c"
    for bad in ("..", "a/../b", "x y", "$HOME", "a\\b", "-rf"):
        with pytest.raises(InputError, match="object key segment"):
            safe_key("images", bad)


def test_uris_choose_the_store(tmp_path):
    assert isinstance(open_store(str(tmp_path / "out"), StorageConfig()), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}/out", StorageConfig()), LocalStore)
    s3 = open_store("s3://my-bucket/a/b", StorageConfig(endpoint_url="http://127.0.0.1:9"))
    assert isinstance(s3, S3Store) and s3.bucket == "my-bucket" and s3.prefix == "a/b"
    for uri, msg in [
        ("gs://b/p", "unsupported scheme 'gs'"),
        ("s3://Bad_Bucket/p", "not a valid S3 bucket name"),
        ("s3://bucket/../etc", "object key segment"),
        ("file://remote-host/x", "must be local"),
    ]:
        with pytest.raises(InputError, match=msg):
            open_store(uri, StorageConfig())


def test_local_store_round_trip(tmp_path):
    store = open_store(str(tmp_path / "out"), StorageConfig())
    store.check()
    uri = store.put_bytes("images/j/1.png", b"abc")
    assert uri == (tmp_path / "out/images/j/1.png").as_uri()
    assert store.get_bytes("images/j/1.png") == b"abc" and store.exists("images/j/1.png")
    assert store.list_keys("images") == ["images/j/1.png"] and not store.exists("nope")


def test_local_store_that_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot write here"):
        open_store(str(tmp_path / "file" / "out"), StorageConfig()).check()


def test_s3_store_round_trip(bucket):
    store = open_store(f"s3://{bucket}/runs/one", StorageConfig())
    store.check()
    assert store.put_bytes("images/j/1.png", b"png", "image/png") == f"s3://{bucket}/runs/one/images/j/1.png"
    assert store.get_bytes("images/j/1.png") == b"png" and store.exists("images/j/1.png")
    assert store.list_keys() == ["images/j/1.png"]  # the write check left nothing behind
    head = boto3.client("s3").head_object(Bucket=bucket, Key="runs/one/images/j/1.png")
    assert head["ContentType"] == "image/png"


def test_s3_missing_bucket_and_unreachable_endpoint(s3_server):
    with pytest.raises(InputError, match=r"^s3://no-such-bucket/p: bucket 'no-such-bucket' does not exist$"):
        open_store("s3://no-such-bucket/p", StorageConfig()).check()
    with pytest.raises(InputError, match=r"^s3://bucket-x/p: cannot reach the endpoint"):
        open_store("s3://bucket-x/p", StorageConfig(endpoint_url="http://127.0.0.1:9", connect_timeout=1)).check()


def test_s3_bad_credentials_name_the_uri_and_not_the_secret(bucket, monkeypatch):
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto now checks signatures
    monkeypatch.setattr(authorization.ActionAuthenticatorMixin, "request_count", 0)
    cfg = StorageConfig(access_key_id="AKIAWRONGWRONGWRONG", secret_access_key="wrong-secret-value")
    with pytest.raises(InputError) as err:
        open_store(f"s3://{bucket}/p", cfg).check()
    msg = str(err.value)
    assert msg.startswith(f"s3://{bucket}/p: access denied") and "wrong-secret-value" not in msg
