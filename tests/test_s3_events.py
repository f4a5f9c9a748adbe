"""S3 event notifications purge what they name: the shapes AWS, MinIO, Ceph, SNS and
EventBridge send (fixtures written from their documented formats), the events token, and the
SNS subscription handshake."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest
import trio

from sngin.admin.events import confirm_allowed, offered_token
from sngin.admin.s3_events import (
    CodeTarget,
    EventError,
    ObjectEvent,
    code_target,
    parse_notification,
)
from sngin.config import S3Settings
from tests.httpserver import LoopbackServer
from tests.support import (
    AUTH,
    EVENTS_TOKEN,
    TOKEN,
    aws_record,
    code_cache,
    post_event,
    running,
    tls_contexts,
)


def minio_event(bucket: str, key: str) -> dict:
    """A MinIO webhook body: EventName and Key on top, then Records (eventVersion 2.0)."""
    record = aws_record(bucket, key, version="2.0")
    record["eventSource"] = "minio:s3"
    record["source"] = {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"}
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}


def sns_wrapped(inner: dict) -> dict:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:sngin-code",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps(inner),
        "Timestamp": "2026-12-02T04:00:00.000Z",
        "SignatureVersion": "1",
    }


def eventbridge(bucket: str, key: str) -> dict:
    return {
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created", "source": "aws.s3", "account": "111122223333",
        "time": "2026-12-02T04:00:00Z", "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "size": 5, "etag": "b1946ac9", "sequencer": "00617F08"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
                   "reason": "PutObject"},
    }  # fmt: skip


# --- reading notifications (pure) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"Records": [aws_record("code", "a.test/hello/index.lua")]}, "a.test/hello/index.lua"),
        (minio_event("code", "a.test/hello/index.lua"), "a.test/hello/index.lua"),
        (
            sns_wrapped({"Records": [aws_record("code", "a.test/x/index.lua")]}),
            "a.test/x/index.lua",
        ),
        (eventbridge("code", "a.test/a b/index.lua"), "a.test/a b/index.lua"),  # not encoded
        # URL-encoded keys: `+` is a space, %2B a plus, non-ASCII as UTF-8 escapes
        ({"Records": [aws_record("code", "a.test/my+page/index.lua")]}, "a.test/my page/index.lua"),
        ({"Records": [aws_record("code", "a.test/c%2B%2B/index.lua")]}, "a.test/c++/index.lua"),
        ({"Records": [aws_record("code", "a.test/caf%C3%A9/index.lua")]}, "a.test/café/index.lua"),
    ],
)
def test_notifications_of_every_shape_name_their_decoded_keys(document, expected):
    notification = parse_notification(json.dumps(document).encode())
    assert notification.objects == (ObjectEvent(bucket="code", key=expected),)
    assert notification.unknown == 0


def test_records_of_unknown_versions_or_shapes_are_counted_not_fatal():
    records = [aws_record("code", "a.test/index.lua", version="3.0"), {"s3": {}}, "junk",
               aws_record("code", "a.test/ok/index.lua", version="2.3"),
               aws_record("code", "a.test/%FF/index.lua")]  # fmt: skip
    notification = parse_notification(json.dumps({"Records": records}).encode())
    assert notification.objects == (ObjectEvent(bucket="code", key="a.test/ok/index.lua"),)
    assert notification.unknown == 4


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"hello": 1}',
        b'{"Records": {}}',
        b'{"Type": "Notification"}',
        b'{"Type": "Notification", "Message": "{"}',
        b'{"Type": "Surprise"}',
    ],
)
def test_bodies_that_are_not_notifications_are_clear_errors(body):
    with pytest.raises(EventError):
        parse_notification(body)


def test_test_events_and_subscription_messages():
    assert parse_notification(b'{"Service": "Amazon S3", "Event": "s3:TestEvent"}').objects == ()
    confirmation = parse_notification(
        json.dumps({"Type": "SubscriptionConfirmation", "SubscribeURL": "https://x/"}).encode()
    )
    assert confirmation.subscribe_url == "https://x/"


@pytest.mark.parametrize(
    ("key", "prefix", "target"),
    [
        ("code/a.test/index.lua", "code", CodeTarget("a.test", "/")),
        ("code/a.test/x/y/index.lua", "code", CodeTarget("a.test", "/x/y")),
        ("code/a.test/lib/util.lua", "code", CodeTarget("a.test", "/lib/util.lua")),
        ("code/a.test/_sngin.json", "code", CodeTarget("a.test", "/_sngin.json")),
        ("a.test/x/index.lua", "", CodeTarget("a.test", "/x")),
        ("other/a.test/index.lua", "code", None),
        ("codex/a.test/index.lua", "code", None),
        ("code/a.test", "code", None),
        ("code/a.test/dir/", "code", None),
    ],
)
def test_keys_map_to_what_they_name_under_the_prefix(key, prefix, target):
    assert code_target(key, prefix) == target


def test_the_token_is_read_from_bearer_basic_or_the_raw_header():
    assert offered_token(f"Bearer {EVENTS_TOKEN}") == EVENTS_TOKEN
    assert offered_token(EVENTS_TOKEN) == EVENTS_TOKEN  # MinIO's auth_token, verbatim
    basic = base64.b64encode(f"sns:{EVENTS_TOKEN}".encode()).decode()
    assert offered_token(f"Basic {basic}") == EVENTS_TOKEN
    assert offered_token("Basic !!!") == ""


def test_only_https_urls_on_allowed_hosts_are_confirmed():
    patterns = ("sns.*.amazonaws.com",)
    assert confirm_allowed("https://sns.us-east-1.amazonaws.com/?Action=Confirm", patterns)
    assert not confirm_allowed("http://sns.us-east-1.amazonaws.com/", patterns)
    assert not confirm_allowed("https://sns.us-east-1.amazonaws.com.evil.test/", patterns)
    assert not confirm_allowed("https://evil.test/sns.us-east-1.amazonaws.com", patterns)
    assert not confirm_allowed("https://user@evil.test/", patterns)
    # `*` is one label, never several; the port is 443 or none.
    assert not confirm_allowed("https://sns.evil.test.amazonaws.com/", patterns)
    assert not confirm_allowed("https://sns..amazonaws.com/", patterns)
    assert not confirm_allowed("https://sns.us-east-1.amazonaws.com:8443/", patterns)
    assert not confirm_allowed("https://sns.us-east-1.amazonaws.com:99999/", patterns)
    assert confirm_allowed("https://sns.us-east-1.amazonaws.com:443/", patterns)
    assert confirm_allowed("https://SNS.us-east-1.amazonaws.com/", patterns)


# --- through a server whose code is in S3 -------------------------------------------------------


def events_settings(bucket, prefix: str = "code") -> dict:
    return {
        "s3": S3Settings(bucket=bucket.name, prefix=prefix),
        "events_token": EVENTS_TOKEN,
    }


async def test_an_event_makes_the_server_serve_the_new_script(proxy, bucket, tmp_path):
    key = "code/s3.test/my page/index.lua"
    bucket.put(key, "return 'v1'")
    encoded = "code/s3.test/my+page/index.lua"
    changes = events_settings(bucket)
    async with (
        code_cache(proxy, bucket, prefix="code") as cache,
        running(tmp_path, store=cache, settings_changes=changes, admin_token=TOKEN) as srv,
    ):
        assert (await srv.get("/my page", host="s3.test")).text == "v1"
        bucket.put(key, "return 'v2'")
        assert (await srv.get("/my page", host="s3.test")).text == "v1"  # cached for the TTL
        answer = await post_event(srv, {"Records": [aws_record(bucket.name, encoded)]})
        assert answer.json() == {"purged": 1, "ignored": 0}
        assert (await srv.get("/my page", host="s3.test")).text == "v2"
        # A duplicate delivery (or one out of order) only purges again.
        again = await post_event(srv, {"Records": [aws_record(bucket.name, encoded)]})
        assert again.json() == {"purged": 1, "ignored": 0}
        assert (await srv.get("/my page", host="s3.test")).text == "v2"
        # MinIO sends its token verbatim; SNS as Basic credentials.
        bucket.put(key, "return 'v3'")
        minio = await post_event(srv, minio_event(bucket.name, encoded), EVENTS_TOKEN)
        assert minio.json() == {"purged": 1, "ignored": 0}
        assert (await srv.get("/my page", host="s3.test")).text == "v3"
        bucket.put(key, "return 'v4'")
        basic = "Basic " + base64.b64encode(f"sns:{EVENTS_TOKEN}".encode()).decode()
        wrapped = sns_wrapped({"Records": [aws_record(bucket.name, encoded)]})
        assert (await post_event(srv, wrapped, basic)).json() == {"purged": 1, "ignored": 0}
        assert (await srv.get("/my page", host="s3.test")).text == "v4"
        metrics = (await srv.client.get(srv.url + "/__sngin/metrics", headers=AUTH)).text
    assert 'sngin_s3_events_total{outcome="purged"} 4.0' in metrics


async def test_keys_outside_the_code_root_and_wrong_tokens(proxy, bucket, tmp_path):
    async with (
        code_cache(proxy, bucket, prefix="code") as cache,
        running(tmp_path, store=cache, settings_changes=events_settings(bucket)) as srv,
    ):
        outside = {"Records": [aws_record(bucket.name, "elsewhere/a.test/index.lua"),
                               aws_record("another-bucket", "code/a.test/index.lua"),
                               aws_record(bucket.name, "code/bad_host!/index.lua")]}  # fmt: skip
        assert (await post_event(srv, outside)).json() == {"purged": 0, "ignored": 3}
        wrong = await post_event(srv, outside, "Bearer not-the-token")
        assert wrong.status_code == 401
        assert (await post_event(srv, outside, "")).status_code == 401
        bad = await srv.client.post(
            srv.url + "/__sngin/events/s3", content=b"{oops",
            headers={"Authorization": f"Bearer {EVENTS_TOKEN}"},
        )  # fmt: skip
        assert bad.status_code == 400
        assert bad.json() == {"error": "the body is not JSON"}


async def test_events_are_off_without_a_token_and_need_an_s3_code_root(tmp_path):
    async with running(tmp_path) as srv:
        answer = await post_event(srv, {"Records": []})
        assert answer.status_code == 403
        assert "SNGIN_EVENTS_TOKEN" in answer.json()["error"]
    async with running(tmp_path, settings_changes={"events_token": EVENTS_TOKEN}) as srv:
        assert (await post_event(srv, {"Records": []})).status_code == 409


class Confirmations(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Confirmations.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


async def test_an_sns_subscription_is_confirmed_only_on_an_allowed_https_host(tmp_path):
    server_context, client_context = tls_contexts("localhost")
    Confirmations.seen = []
    confirmer = LoopbackServer(Confirmations, ssl_context=server_context)
    changes = {
        "events_token": EVENTS_TOKEN,
        "sns_confirm_hosts": ("localhost",),
        "s3": S3Settings(bucket="code-bucket"),
    }
    try:
        seam = {"events_tls": client_context, "events_confirm_port": confirmer.port}
        async with running(tmp_path, settings_changes=changes, deps_changes=seam) as srv:
            url = "https://localhost/?Action=ConfirmSubscription&Token=abc"
            message = {"Type": "SubscriptionConfirmation", "SubscribeURL": url}
            with trio.fail_after(20):
                answer = await post_event(srv, message)
            assert (answer.status_code, answer.json()) == (200, {"confirmed": True})
            assert Confirmations.seen == ["/?Action=ConfirmSubscription&Token=abc"]
            for refused in (
                f"https://localhost:{confirmer.port}/",  # https on 443 only
                "http://localhost/",
                "https://evil.test/",
            ):
                message = {"Type": "SubscriptionConfirmation", "SubscribeURL": refused}
                assert (await post_event(srv, message)).status_code == 403
            assert len(Confirmations.seen) == 1
    finally:
        confirmer.stop()
