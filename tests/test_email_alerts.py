"""email.send through a real SMTP server on loopback (aiosmtpd), and alert.email/alert.sms
delivered to a local webhook."""

from __future__ import annotations

import email
import email.policy
import json
import re

import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.support import free_port, serving, tls_contexts
from tests.upstream import Upstream


class Inbox:
    """aiosmtpd handler: keeps each message it is given."""

    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def message(self, index: int = -1) -> email.message.EmailMessage:
        content = self.envelopes[index].content
        return email.message_from_bytes(content, policy=email.policy.default)  # type: ignore[return-value]


def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = auth_data.login == b"mailer" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticate,
        auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    yield inbox, controller.port
    controller.stop()


def send_script(port: int, extra: str = "") -> str:
    return f"""
        local ok, err = pcall(email.send, {{
            server = '127.0.0.1:{port}', username = 'mailer', password = 's3cret',
            from = 'app@a.test', to = {{'one@example.com', 'two@example.com'}},
            replyto = 'help@a.test', subject = 'Your report',
            text = 'plain body', html = '<p>html body</p>', {extra}
        }})
        return ok and 'sent' or err
    """


async def test_email_send_delivers_a_mime_message(tmp_path, smtp):
    inbox, port = smtp
    async with serving(tmp_path, {"a.test/mail": send_script(port)}) as srv:
        assert (await srv.get("/mail")).text == "sent"
    envelope = inbox.envelopes[0]
    assert envelope.mail_from == "app@a.test"
    assert envelope.rcpt_tos == ["one@example.com", "two@example.com"]
    message = inbox.message()
    assert message["Subject"] == "Your report"
    assert message["Reply-To"] == "help@a.test"
    assert message.get_body(("plain",)).get_content().strip() == "plain body"
    assert message.get_body(("html",)).get_content().strip() == "<p>html body</p>"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("password = 'wrong',", "email.send: the mail server refused the login"),
        ("subject = 'a\\r\\nBcc: evil@example.com',", "email.send: subject must be one line"),
    ],
)
async def test_email_send_failures_are_the_scripts_error(tmp_path, smtp, extra, expected):
    inbox, port = smtp
    script = send_script(port).replace("replyto = 'help@a.test',", extra + " replyto = 'h@a.test',")
    script = script.replace("password = 's3cret',", "") if "password" in extra else script
    script = script.replace("subject = 'Your report',", "") if "subject" in extra else script
    async with serving(tmp_path, {"a.test/mail": script}) as srv:
        text = (await srv.get("/mail")).text
    assert text.endswith(expected), text
    assert inbox.envelopes == []


async def test_email_goes_only_where_the_egress_guard_allows(tmp_path, smtp):
    script = """
        local ok, err = pcall(email.send, {server = '10.1.2.3', from = 'a@a.test',
                                            to = 'b@example.com', text = 'x'})
        return err
    """
    async with serving(tmp_path, {"a.test/mail": script}) as srv:
        text = (await srv.get("/mail")).text
    assert text.endswith(
        "email.send: the destination 10.1.2.3 (10.1.2.3) is not allowed: the server's egress"
        " guard refuses private and local addresses unless the operator lists them in"
        " SNGIN_EGRESS_ALLOW"
    )


async def test_email_with_starttls_verifies_the_host_name(tmp_path):
    server_context, client_context = tls_contexts("mail.example.test")
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=server_context,
        require_starttls=True,
    )  # fmt: skip
    controller.start()

    async def resolve(host: str, _port: int) -> list[str]:
        return ["127.0.0.1"]  # the name resolves to loopback, which the policy opens

    try:
        script = f"""
            local ok, err = pcall(email.send, {{server = '%s:{port}', secure = true,
                from = 'a@a.test', to = 'b@example.com', subject = 's', text = 'over tls'}})
            return ok and 'sent' or err
        """
        scripts = {
            "a.test/tlsgood": script % "mail.example.test",
            "a.test/tlsbad": script % "other.test",
        }
        async with serving(tmp_path, scripts, resolver=resolve, ssl_context=client_context) as srv:
            good = (await srv.get("/tlsgood")).text
            bad = (await srv.get("/tlsbad")).text
    finally:
        controller.stop()
    assert good == "sent"
    assert inbox.message()["Subject"] == "s"
    assert "certificate" in bad.lower() or "hostname" in bad.lower(), bad
    assert len(inbox.envelopes) == 1


async def test_email_can_be_turned_off(tmp_path, smtp):
    _, port = smtp
    async with serving(
        tmp_path, {"a.test/mail": send_script(port)}, settings_changes={"email_enabled": False}
    ) as srv:
        text = (await srv.get("/mail")).text
    assert text.endswith("email.send: email is turned off on this server")


# --- alerts --------------------------------------------------------------------------------


async def test_alerts_go_to_the_tenants_webhook_as_json(tmp_path):
    hook = Upstream()
    try:
        (tmp_path / "a.test").mkdir()
        (tmp_path / "a.test" / "_sngin.json").write_text(
            json.dumps({"alerts": {"webhook": hook.url("/hook")}})
        )
        script = "alert.email('disk almost full') alert.sms('call me') return 'alerted'"
        async with serving(tmp_path, {"a.test/alert": script}, tenant_configs=True) as srv:
            response = await srv.get("/alert")
            await trio.testing.wait_all_tasks_blocked()
            metrics = srv.deps.observer.metrics.render().decode()
    finally:
        hook.close()
    assert response.text == "alerted"
    posts = [json.loads(r["body"]) for r in hook.requests if r["path"] == "/hook"]
    assert [(p["tenant"], p["kind"], p["text"]) for p in posts] == [
        ("a.test", "email", "disk almost full"),
        ("a.test", "sms", "call me"),
    ]
    assert posts[0]["request_id"] == response.headers["x-request-id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", posts[0]["time"])
    assert 'sngin_alerts_total{kind="email",outcome="delivered",tenant="a.test"} 1.0' in metrics


async def test_alerts_are_rate_limited_per_tenant(tmp_path):
    hook = Upstream()
    try:
        (tmp_path / "a.test").mkdir()
        (tmp_path / "a.test" / "_sngin.json").write_text(
            json.dumps({"alerts": {"webhook": hook.url("/hook")}})
        )
        script = "for i = 1, 12 do alert.sms('n' .. i) end return 'done'"
        async with serving(tmp_path, {"a.test/many": script}, tenant_configs=True) as srv:
            assert (await srv.get("/many")).text == "done"
            metrics = srv.deps.observer.metrics.render().decode()
    finally:
        hook.close()
    assert len([r for r in hook.requests if r["path"] == "/hook"]) == 10
    assert 'kind="sms",outcome="rate_limited",tenant="a.test"} 2.0' in metrics


async def test_alerts_of_tenants_without_a_webhook_go_to_the_operators(tmp_path):
    hook = Upstream()
    try:
        changes = {"alert_webhook": hook.url("/operator")}
        script = "alert.email('from a tenant without its own') return 'ok'"
        async with serving(tmp_path, {"a.test/op": script}, settings_changes=changes) as srv:
            assert (await srv.get("/op")).text == "ok"
    finally:
        hook.close()
    posts = [json.loads(r["body"]) for r in hook.requests if r["path"] == "/operator"]
    assert [p["text"] for p in posts] == ["from a tenant without its own"]


async def test_email_counts_against_the_subrequest_budget(tmp_path, smtp):
    inbox, port = smtp
    script = f"""
        local spec = {{server = '127.0.0.1', port = {port}, from = 'a@a.test', to = 'b@b.test',
                       text = 'x'}}
        email.send(spec)
        local ok, err = pcall(email.send, spec)
        return err
    """
    async with serving(tmp_path, {"a.test/twice": script}, max_subrequests=1) as srv:
        text = (await srv.get("/twice")).text
    assert text.endswith("email.send: more than 1 subrequests in one request")
    assert len(inbox.envelopes) == 1


async def test_an_alert_without_a_target_is_logged_and_returns(tmp_path, caplog):
    caplog.set_level("WARNING", logger="sngin.script")
    async with serving(
        tmp_path, {"a.test/alone": "alert.email('no one listens') return 'ok'"}
    ) as srv:
        assert (await srv.get("/alone")).text == "ok"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sngin.script"]
    assert {"tenant": "a.test", "alert": "email", "line": "no one listens"}.items() <= lines[
        0
    ].items()


async def test_a_webhook_that_fails_is_the_scripts_error(tmp_path):
    hook = Upstream()
    try:
        (tmp_path / "a.test").mkdir()
        (tmp_path / "a.test" / "_sngin.json").write_text(
            json.dumps({"alerts": {"webhook": hook.url("/status/500")}})
        )
        script = "local ok, err = pcall(alert.email, 'x') return err"
        async with serving(tmp_path, {"a.test/fails": script}, tenant_configs=True) as srv:
            text = (await srv.get("/fails")).text
    finally:
        hook.close()
    assert text.endswith("alert.email: not delivered: the webhook answered 500")
