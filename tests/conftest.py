"""Shared test setup: a moto S3 server on loopback, a counting proxy, fresh buckets."""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

# botocore otherwise probes the cloud metadata address for credentials.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# Tenant storage's default folder ($XDG_DATA_HOME/sngin) is a throwaway one for the tests (and
# every `sngin` they start): never the user's real data.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="sngin-test-data-")

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's standalone S3 server, once per session, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def proxy(s3_endpoint):
    from tests.s3proxy import CountingProxy

    counting = CountingProxy(s3_endpoint)
    counting.start()
    yield counting
    counting.stop()


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint):
    """A botocore client straight to moto, for tests to arrange objects (not through the proxy)."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


class Bucket:
    """Test-side access to one fresh bucket."""

    def __init__(self, client, name: str) -> None:
        self.name = name
        self.client = client
        self.client.create_bucket(Bucket=name)

    def put(self, key: str, text: str | bytes) -> None:
        body = text.encode() if isinstance(text, str) else text
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def bucket(s3_admin):
    return Bucket(s3_admin, f"sngin-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials moto accepts, and nothing from the developer's own AWS configuration."""
    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_EC2_METADATA_DISABLED":
            monkeypatch.delenv(name)
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    return monkeypatch


@pytest.fixture
def upstream():
    """A loopback HTTP server scripts call with http.request (tests/upstream.py)."""
    from tests.upstream import Upstream

    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a free loopback port, once per session (Debian's package)."""
    from tests.support import free_port, redis_server_process

    port = free_port()
    with redis_server_process(port):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    import socket

    host_port = redis_server.removeprefix("redis://").split("/")[0]
    host, port = host_port.split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"FLUSHALL\r\n")
        assert connection.recv(64).startswith(b"+OK")
    return redis_server


@pytest.fixture(params=["sqlite", "redis"])
def backend(request):
    """Settings changes for each storage backend: the same tests run against both."""
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}
