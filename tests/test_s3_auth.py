"""S3 with signatures checked: a moto server process whose IAM rejects unsigned or bad requests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import httpx
import pytest
import trio

from sngin.code.s3_store import open_s3_store
from sngin.code.store import Modified
from sngin.config import S3Settings
from sngin.errors import CodeFetchError
from tests.httpserver import LoopbackServer
from tests.support import free_port

BUCKET = "sngin-auth"
FAST = {"attempt_timeout_s": 1.0, "deadline_s": 5.0, "max_attempts": 3}


@pytest.fixture(scope="module")
def auth_s3():
    """moto in its own process (auth settings are process-wide), with an IAM user allowed to
    read the bucket; then INITIAL_NO_AUTH_ACTION_COUNT is set to 0 so every request is checked."""
    import botocore.session

    port = free_port()
    drain = None
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # werkzeug announces the listener on stderr
            if "Running on" in line:
                break
        # Keep draining its request log so the pipe never fills and blocks the server.
        drain = threading.Thread(target=process.stderr.read, daemon=True)
        drain.start()
        endpoint = f"http://127.0.0.1:{port}"
        session = botocore.session.get_session()
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}  # fmt: skip
        iam = session.create_client("iam", **admin)
        iam.create_user(UserName="sngin")
        key = iam.create_access_key(UserName="sngin")["AccessKey"]
        allow_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        policy = {"Version": "2012-10-17", "Statement": [allow_s3]}
        iam.put_user_policy(UserName="sngin", PolicyName="read", PolicyDocument=json.dumps(policy))
        s3 = session.create_client("s3", **admin)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="a.test/index.lua", Body=b"return 'signed'")
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        if drain is not None:
            drain.join(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


async def fetch_with_env(aws_env, endpoint: str):
    aws_env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    with trio.fail_after(20):
        async with open_s3_store(S3Settings(bucket=BUCKET, **FAST)) as store:
            return await store.get("a.test", etag=None, last_modified=None)


async def test_credentials_from_env(auth_s3, aws_env):
    endpoint, key_id, secret = auth_s3
    aws_env.setenv("AWS_ACCESS_KEY_ID", key_id)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    result = await fetch_with_env(aws_env, endpoint)
    assert isinstance(result, Modified)
    assert result.source.text == b"return 'signed'"


async def test_credentials_from_a_profile_file(auth_s3, aws_env, tmp_path):
    endpoint, key_id, secret = auth_s3
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[sngin-test]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
    )
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    aws_env.setenv("AWS_PROFILE", "sngin-test")
    result = await fetch_with_env(aws_env, endpoint)
    assert isinstance(result, Modified)
    assert result.source.text == b"return 'signed'"


async def test_bad_signature_is_denied_without_retrying(auth_s3, aws_env, caplog):
    from tests.s3proxy import CountingProxy

    endpoint, key_id, _ = auth_s3
    aws_env.setenv("AWS_ACCESS_KEY_ID", key_id)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    counting = CountingProxy(endpoint)
    counting.start()
    try:
        with pytest.raises(CodeFetchError, match="denied"):
            await fetch_with_env(aws_env, counting.url)
    finally:
        counting.stop()
    assert counting.gets("a.test/index.lua", 403) == 1
    assert counting.gets("a.test/index.lua") == 1
    assert any("denied access" in r.getMessage() for r in caplog.records)


async def test_unsigned_requests_are_denied(auth_s3, aws_env):
    endpoint, _, _ = auth_s3
    aws_env.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    with pytest.raises(CodeFetchError, match="denied"):
        await fetch_with_env(aws_env, endpoint)


async def test_odd_keys_are_signed_as_sent(auth_s3, aws_env):
    import botocore.session

    endpoint, key_id, secret = auth_s3
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key_id, aws_secret_access_key=secret,
    )  # fmt: skip
    client.put_object(Bucket=BUCKET, Key="odd.test/a b/ünï+%/index.lua", Body=b"return 'odd'")
    aws_env.setenv("AWS_ACCESS_KEY_ID", key_id)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    aws_env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    with trio.fail_after(20):
        async with open_s3_store(S3Settings(bucket=BUCKET, **FAST)) as store:
            result = await store.get("odd.test/a b/ünï+%", etag=None, last_modified=None)
    assert isinstance(result, Modified)
    assert result.source.text == b"return 'odd'"


async def test_expiring_credentials_are_refreshed_without_a_restart(auth_s3):
    from datetime import UTC, datetime, timedelta

    from botocore.credentials import RefreshableCredentials

    from sngin.code.s3_store import Endpoint, S3Store

    endpoint, key_id, secret = auth_s3
    refreshed = []

    def refresh():
        refreshed.append(1)
        expiry = datetime.now(UTC) + timedelta(hours=1)
        return {"access_key": key_id, "secret_key": secret, "token": None,
                "expiry_time": expiry.isoformat()}  # fmt: skip

    # Expired, and wrong until refreshed: only a refresh makes the request succeed.
    credentials = RefreshableCredentials.create_from_metadata(
        metadata={"access_key": key_id, "secret_key": "stale", "token": None,
                  "expiry_time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()},
        refresh_using=refresh,
        method="test",
    )  # fmt: skip
    settings = S3Settings(bucket=BUCKET, **FAST)
    with trio.fail_after(20):
        async with httpx.AsyncClient() as http:
            store = S3Store(
                http, settings, Endpoint(f"{endpoint}/{BUCKET}", "us-east-1"), credentials
            )
            result = await store.get("a.test", etag=None, last_modified=None)
    assert isinstance(result, Modified)
    assert refreshed


async def test_denied_access_through_the_server_is_502(auth_s3, aws_env, tmp_path):
    from sngin.code.cache import CodeCache
    from sngin.config import CacheSettings
    from tests.support import running

    endpoint, key_id, _ = auth_s3
    aws_env.setenv("AWS_ACCESS_KEY_ID", key_id)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    aws_env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    async with (
        open_s3_store(S3Settings(bucket=BUCKET, **FAST)) as store,
        trio.open_nursery() as nursery,
    ):
        cache = CodeCache(store, CacheSettings(), nursery)
        async with running(tmp_path, store=cache) as srv:
            response = await srv.get("/", host="a.test")
        nursery.cancel_scope.cancel()
    assert response.status_code == 502
    assert response.text == "code store denied access\n"


class SignatureRecorder(BaseHTTPRequestHandler):
    """An S3 stand-in that records the region each request was signed for, and has no keys."""

    regions: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        found = re.search(
            r"Credential=[^/]+/\d{8}/([^/]+)/s3/", self.headers["Authorization"] or ""
        )
        SignatureRecorder.regions.append(found.group(1) if found else "unsigned")
        body = b"<Error><Code>NoSuchKey</Code></Error>"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("env", "profile_region", "signed_for"),
    [
        ({"AWS_REGION": "eu-west-1"}, None, "eu-west-1"),  # the README's example
        ({"AWS_DEFAULT_REGION": "ap-south-1"}, None, "ap-south-1"),
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-south-1"}, None, "eu-west-1"),
        ({"AWS_PROFILE": "code"}, "sa-east-1", "sa-east-1"),
        ({"AWS_REGION": "eu-west-1", "AWS_PROFILE": "code"}, "sa-east-1", "eu-west-1"),
        ({}, None, "us-east-1"),
    ],
)
async def test_the_region_s3_sees_in_the_signature(aws_env, tmp_path, env, profile_region,
                                                   signed_for):  # fmt: skip
    aws_env.delenv("AWS_DEFAULT_REGION")
    if profile_region is not None:
        config = tmp_path / "config"
        config.write_text(f"[profile code]\nregion = {profile_region}\n")
        aws_env.setenv("AWS_CONFIG_FILE", str(config))
    for name, value in env.items():
        aws_env.setenv(name, value)
    SignatureRecorder.regions = []
    recorder = LoopbackServer(SignatureRecorder)
    try:
        aws_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{recorder.port}")
        with trio.fail_after(20):
            async with open_s3_store(S3Settings(bucket=BUCKET, **FAST)) as store:
                await store.get("a.test", etag=None, last_modified=None)
    finally:
        recorder.stop()
    assert SignatureRecorder.regions == [signed_for]
