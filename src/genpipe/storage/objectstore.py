"""Object stores behind one small interface: a local folder, or ``s3://bucket/prefix``.

Both use the same key layout, so a job writes the same tree to either. Keys are built
only from validated parts (:func:`safe_key`), never from raw user strings. S3 goes through
boto3 with the standard AWS settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) or the ``storage`` section of
params.yaml; credentials never appear in messages, logs or manifests.

:meth:`ObjectStore.check` is the pre-flight: a missing bucket, bad credentials or an
unreachable endpoint fail there, with one line naming the URI, before any work is done.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from genpipe.config import StorageConfig
from genpipe.errors import InputError, without_userinfo
from genpipe.storage.atomic import atomic_write_bytes

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def safe_key(*parts: str) -> str:
    """Join key parts with ``/`` after checking each segment: no ``..``, no odd characters."""
    segments = [s for p in parts for s in str(p).split("/") if s]
    for s in segments:
        if not _SEGMENT.match(s) or s in (".", ".."):
            raise InputError(f"object key segment {s!r}: only letters, digits and . _ = - are allowed")
    return "/".join(segments)


class ObjectStore(Protocol):
    uri: str  # what the user gave, normalised; safe to print

    def check(self) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str = "") -> list[str]: ...
    def uri_for(self, key: str) -> str: ...


@dataclass
class LocalStore:
    """A folder; objects are files written atomically."""

    root: Path

    @property
    def uri(self) -> str:
        return self.root.as_posix()

    def check(self) -> None:
        """That files can be written here; leaves no trace (the folders it made for the probe go
        again), so a job that fails after the check leaves no empty output folder."""
        made = [p for p in (self.root, *self.root.parents) if not p.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".genpipe-write-check-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"{self.uri}: cannot write here ({exc.strerror or type(exc).__name__})") from None
        finally:
            for folder in made:  # innermost first
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        atomic_write_bytes(self.root / key, data)
        return self.uri_for(key)

    def get_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def uri_for(self, key: str) -> str:
        return (self.root / key).resolve().as_uri()


class StoreFailed(InputError):
    """The object store failed in the middle of a job (after its pre-flight check passed)."""


class S3Store:
    """``s3://bucket/prefix`` through boto3, on AWS or any S3-compatible endpoint."""

    def __init__(self, bucket: str, prefix: str, cfg: StorageConfig):
        import boto3  # deferred: only s3:// stores need it, and it takes a second to import

        self.bucket, self.prefix = bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        session = boto3.session.Session(
            aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
            aws_secret_access_key=cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None,
            region_name=cfg.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
        self.connect_timeout = cfg.connect_timeout

        def make_client(read_timeout: float, attempts: int):
            return session.client(
                "s3",
                endpoint_url=cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
                config=BotoConfig(
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=read_timeout,
                    retries={"max_attempts": attempts, "mode": "standard"},
                    request_checksum_calculation="when_required",  # non-AWS endpoints
                    response_checksum_validation="when_required",
                ),
            )

        self.client = make_client(cfg.read_timeout, 3)
        self._probe_client = make_client(cfg.connect_timeout, 1)  # the pre-flight: one try, answered in time or not

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        probe = self._key(f".genpipe-write-check-{uuid.uuid4().hex}")
        try:
            self._probe_client.head_bucket(Bucket=self.bucket)
            self._probe_client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self._probe_client.delete_object(Bucket=self.bucket, Key=probe)
        except NoCredentialsError:
            raise InputError(f"{self.uri}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from None
        except EndpointConnectionError as exc:
            raise InputError(f"{self.uri}: cannot reach the endpoint {without_userinfo(exc.kwargs.get('endpoint_url', ''))}") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise InputError(f"{self.uri}: bucket {self.bucket!r} does not exist") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise InputError(f"{self.uri}: access denied ({code}); check the AWS credentials") from None
            raise InputError(f"{self.uri}: {code or 'error'} from the S3 endpoint") from None
        except ReadTimeoutError:
            raise InputError(f"{self.uri}: the endpoint accepted the connection but did not answer within "
                             f"{self.connect_timeout:g} s (storage.connect_timeout)") from None
        except BotoCoreError as exc:
            raise InputError(f"{self.uri}: cannot reach the endpoint ({type(exc).__name__})") from None

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:  # the store failed after the pre-flight: one line, not botocore's
            code = str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""
            raise StoreFailed(f"{self.uri}: writing {key} failed ({code or type(exc).__name__}, after retries)") from None
        return self.uri_for(key)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        full = self._key(prefix)
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"]
                if not key.rsplit("/", 1)[-1].startswith("."):
                    keys.append(key)
        return sorted(keys)

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(uri: str, cfg: StorageConfig) -> ObjectStore:
    """A local folder (plain path or ``file://``) or an ``s3://bucket/prefix`` store."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise InputError(f"{uri}: file:// URIs must be local (file:///path)")
        return LocalStore(path)
    if parsed.scheme == "s3":
        if not _BUCKET.match(parsed.netloc or ""):
            raise InputError(f"{uri}: {parsed.netloc!r} is not a valid S3 bucket name")
        if parsed.query or parsed.fragment:
            raise InputError(f"{uri}: S3 URIs take no query or fragment")
        return S3Store(parsed.netloc, safe_key(parsed.path), cfg)
    raise InputError(f"{uri}: unsupported scheme {parsed.scheme!r} (use a path, file:// or s3://)")
