"""A real S3 wire protocol for the tests: moto's server, in this process, on a free loopback
port, started once per session; a bucket of its own for each test.

A test module that needs it imports the fixtures: `from s3_server import s3_bucket, s3_server`.
boto3 (moto's own dependency) looks into a bucket as a second, independent client.
"""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "imagegate-test", "AWS_SECRET_ACCESS_KEY": "imagegate-test"}
REGION = "us-east-1"

_running: dict[str, str] = {}


@dataclass
class S3Server:
    endpoint: str

    def client(self) -> Any:
        """boto3's S3 client on this server: to look at buckets as another program would."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


@dataclass
class S3Bucket:
    server: S3Server
    name: str
    prefix: str

    @property
    def settings(self) -> dict[str, Any]:
        """The flat settings that point imagegate at this bucket."""
        return {"storage_backend": "s3", "s3_bucket": self.name,
                "s3_endpoint_url": self.server.endpoint, "s3_region": REGION,
                "s3_prefix": self.prefix}

    def keys(self, under: str = "") -> list[str]:
        """Every key in the bucket (under PREFIX/`under` when given), sorted."""
        listed = self.server.client().list_objects_v2(
            Bucket=self.name, Prefix=f"{self.prefix}/{under}" if under else "")
        return sorted(item["Key"] for item in listed.get("Contents", []))


def _start() -> str:
    """The endpoint of the session's moto server, started on first use."""
    if "endpoint" not in _running:
        pytest.importorskip("moto.server", reason="pip install 'moto[server]' (the dev extra)")
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        atexit.register(server.stop)
        _running["endpoint"] = f"http://{host}:{port}"
    return _running["endpoint"]


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    pytest.importorskip("obstore", reason="pip install 'imagegate[s3]'")
    return S3Server(_start())


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A new, empty bucket; the AWS credentials in the environment, as an operator sets them."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                 "AWS_BUCKET", "AWS_BUCKET_NAME", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    name = f"imagegate-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    yield S3Bucket(s3_server, name, prefix="gw")
