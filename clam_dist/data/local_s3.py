"""A real S3 API server on loopback (moto's server mode) for tests, demos and laptops.

Needs the `test` extra (moto[server], boto3): `pip install -e ".[test]"`.

The server runs in its own process so that it keeps answering while the calling process
is busy (training, Dask reads); traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalS3:
    endpoint_url: str
    bucket: str
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-east-1"
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options that reach this server (the same dict pyarrow/dask accept)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def url(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path.lstrip('/')}"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto-based clients at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }


@contextlib.contextmanager
def local_s3(bucket: str = "clam-dist", timeout_s: float = 30.0) -> Iterator[LocalS3]:
    """Start moto's S3 server on 127.0.0.1:<free port>, create ``bucket``, stop on exit."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto S3 server exited with code {proc.returncode} on start")
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto S3 server did not answer on {endpoint} in {timeout_s}s"
                    ) from None
                time.sleep(0.1)
        server = LocalS3(endpoint_url=endpoint, bucket=bucket, _proc=proc)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=server.key,
            aws_secret_access_key=server.secret,
            region_name=server.region,
        ).create_bucket(Bucket=bucket)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
