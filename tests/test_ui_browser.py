"""The web UI in a real browser (Debian's chromium through Selenium), on the folder store and on
S3 (moto): log in, open a site, edit a script, Run shows the new output and a log line, Save,
the site serves it; a second session saving a stale copy gets the conflict view; a syntax error
is marked on its line; logout closes the UI again. A screenshot of each step is saved under
test-artifacts/ui/<store>/; the browser's console must stay free of errors."""

from __future__ import annotations

import shutil
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from sngin.admin.session import COOKIE, new_session, sign
from sngin.config import S3Settings
from tests.support import TOKEN, code_cache, running

HOST = "ui.test"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and DRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


@contextmanager
def browser(*flags: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,900", "--disable-gpu", *flags):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


class Steps:
    """Drives one browser through the UI; a screenshot per step."""

    def __init__(self, driver, base: str, folder: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.base, self.folder = driver, base, folder
        self.wait = WebDriverWait(driver, 20)
        self.count = 0

    def shot(self, name: str) -> None:
        self.count += 1
        self.driver.save_screenshot(str(self.folder / f"{self.count:02d}-{name}.png"))

    def element(self, css: str):
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.visibility_of_element_located(("css selector", css)))

    def text_is(self, css: str, text: str) -> None:
        self.wait.until(lambda d: d.find_element("css selector", css).text == text)

    def text_has(self, css: str, text: str) -> None:
        self.wait.until(lambda d: text in d.find_element("css selector", css).text)

    def login(self) -> None:
        self.driver.get(self.base + "/__sngin/ui/")
        self.element("#token").send_keys(TOKEN)
        self.element("#login-button").click()

    def open_file(self, path: str) -> None:
        self.element("#tenant-list a[href='#']")
        for link in self.driver.find_elements("css selector", "#tenant-list a"):
            if link.text == HOST:
                link.click()
                break
        self.element(f"#file-list a[data-path='{path}']").click()
        self.text_is("#file-name", path)

    def type_over(self, source: str) -> None:
        from selenium.webdriver.common.keys import Keys

        content = self.element(".cm-content")
        content.click()
        content.send_keys(Keys.CONTROL, "a")
        content.send_keys(Keys.DELETE)
        self.wait.until(lambda d: d.find_element("css selector", ".cm-content").text == "")
        content.send_keys(source)

    def answer_dialog(self, text: str | None) -> None:
        """Accept the prompt (with `text`) or confirm dialog the last click opened."""
        from selenium.webdriver.support import expected_conditions as ec

        dialog = self.wait.until(ec.alert_is_present())
        if text is not None:
            dialog.send_keys(text)
        dialog.accept()

    def editor_text(self) -> str:
        lines = self.driver.find_elements("css selector", ".cm-content .cm-line")
        return "\n".join(line.text for line in lines)

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]


def unexpected(errors: list[str], status: str) -> list[str]:
    expected = f"Failed to load resource: the server responded with a status of {status}"
    # (/favicon.ico: asked for by the browser itself on the API's JSON page, not by the UI)
    return [m for m in errors if expected not in m and "/favicon.ico" not in m]


def scenario(base: str, folder: Path) -> None:
    """The whole walk-through (blocking: run in a thread while the server serves)."""
    from selenium.webdriver.common.keys import Keys

    with browser() as first, browser() as second:
        one, two = Steps(first, base, folder), Steps(second, base, folder / "second")
        (folder / "second").mkdir()
        one.driver.get(base + "/__sngin/ui/")
        one.element("#token")
        one.shot("login")
        one.login()
        one.text_has("#tenant-list", HOST)
        one.shot("sites")
        one.open_file("index.lua")
        assert one.editor_text() == "return 'old output'"
        one.shot("editor")
        # A second session opens the same version now; it will save it after the first did.
        two.login()
        two.open_file("index.lua")

        # (No space typed outside strings: a space the browser sees at the end of a line as
        # it is typed can arrive as U+00A0, which Lua does not read as a space.)
        one.type_over("log('ran')\nreturn'new output'")
        one.element(".cm-content").send_keys(Keys.CONTROL, Keys.ENTER)  # Run
        one.text_is("#preview-body", "new output")
        one.text_is("#preview-logs", "ran")
        one.shot("run")
        one.element(".cm-content").send_keys(Keys.CONTROL, "s")
        one.text_is("#status", "saved")
        one.shot("saved")
        with httpx.Client() as client:
            served = client.get(base + "/", headers={"Host": HOST}).text
        assert served == "new output"

        two.type_over("return'stale-copy'")
        two.element("#save").click()
        two.element("#conflict")
        assert "new output" in two.element("#theirs").text
        assert "stale-copy" in two.element("#mine").text
        two.shot("conflict")

        # New file, rename, delete (each through the browser's own dialogs).
        one.element("#new-file").click()
        one.answer_dialog("lib/util.lua")
        one.element("#file-list a[data-path='lib/util.lua']")
        one.text_is("#status", "saved")
        one.element("#rename").click()
        one.answer_dialog("lib/tools.lua")
        one.element("#file-list a[data-path='lib/tools.lua']")
        one.wait.until(
            lambda d: not d.find_elements("css selector", "#file-list a[data-path='lib/util.lua']")
        )
        one.element("#delete").click()
        one.answer_dialog(None)  # confirm
        one.text_is("#status", "deleted")
        one.wait.until(
            lambda d: not d.find_elements("css selector", "#file-list a[data-path='lib/tools.lua']")
        )
        # No file open: the editor says what to do, and the buttons that cannot act are off.
        one.text_has("#empty-hint", "Pick a file on the left")
        assert all(
            not one.driver.find_element("css selector", f"#{button}").is_enabled()
            for button in ("save", "run", "rename", "delete")
        )
        one.shot("files")
        # A storage key: shown, edited through its dialog.
        one.element("#key-list a").click()
        one.answer_dialog("edited in the UI")
        with httpx.Client() as client:
            value = client.get(
                base + f"/__sngin/storage/{HOST}/value",
                params={"key": "greeting"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ).text
        assert value == "edited in the UI"
        one.shot("storage")
        # The site's scheduled runs: listed beside its files, and one run by hand.
        one.text_has("#cron-list", "0 3 * * * / (next ")
        one.element("#cron-list button").click()
        one.text_has("#cron-runs", "[0] ok 200 (by hand)")
        one.text_is("#status", "run 0: ok 200")
        one.shot("cron")

        one.element("#file-list a[data-path='index.lua']").click()
        one.text_is("#file-name", "index.lua")
        one.type_over("x==1\nreturn(x)")
        one.element(".cm-lint-marker-error")
        one.wait.until(
            lambda d: (
                '"line":1'
                in (d.find_element("css selector", "#editor").get_attribute("data-errors") or "")
            )
        )
        one.shot("syntax-error")
        # Unsaved, and marked so; Save checks first: the errors in a dialog, nothing published.
        assert "unsaved" in one.element("#file-name").get_attribute("class")
        one.element("#save").click()
        one.text_has("#publish-errors", "line 1:")
        one.shot("publish-dialog")
        one.element("#publish-cancel").click()
        one.text_is("#status", "not saved: 1 error")
        with httpx.Client() as client:
            live = client.get(base + "/", headers={"Host": HOST})
        assert (live.status_code, live.text) == (200, "new output")  # the site still answers
        # ...unless the user publishes anyway (Escape closes the dialog: it is a cancel).
        one.element("#save").click()
        one.element("#publish-errors")
        one.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        one.text_is("#status", "not saved: 1 error")
        one.element("#save").click()
        one.element("#publish-anyway").click()
        one.text_is("#status", "saved")
        assert "unsaved" not in (one.element("#file-name").get_attribute("class") or "")
        with httpx.Client() as client:
            assert client.get(base + "/", headers={"Host": HOST}).status_code == 500

        one.element("#logout").click()
        one.element("#token")
        one.shot("logged-out")
        one.driver.get(base + "/__sngin/code")
        assert "missing or wrong admin token" in one.driver.page_source
        one.shot("closed")
        # No script error and no CSP violation; only the answers the steps asked for (the 401
        # of the API after logout, the 412 of the stale save) are logged by the browser.
        assert unexpected(one.console_errors(), "401") == []
        assert unexpected(two.console_errors(), "412") == []


CRON = '{"cron": [{"schedule": "0 3 * * *", "path": "/"}]}'  # a schedule the test never reaches


@asynccontextmanager
async def ui_server(kind: str, tmp_path: Path, request):
    sites = tmp_path / "sites"
    if kind == "folder":
        (sites / HOST).mkdir(parents=True)
        (sites / HOST / "index.lua").write_text("return 'old output'")
        (sites / HOST / "_sngin.json").write_text(CRON)
        async with running(sites, admin_token=TOKEN, tenant_configs=True) as srv:
            yield srv
        return
    proxy, bucket = request.getfixturevalue("proxy"), request.getfixturevalue("bucket")
    bucket.put(f"code/{HOST}/index.lua", "return 'old output'")
    bucket.put(f"code/{HOST}/_sngin.json", CRON)
    changes = {"s3": S3Settings(bucket=bucket.name, prefix="code")}
    async with (
        code_cache(proxy, bucket, prefix="code", ttl_s=3600) as cache,
        running(sites, store=cache, admin_token=TOKEN, settings_changes=changes,
                tenant_configs=True) as srv,
    ):  # fmt: skip
        yield srv


@pytest.mark.parametrize("kind", ["folder", "s3"])
async def test_the_editor_in_a_real_browser(kind, tmp_path, request):
    folder = ARTIFACTS / kind
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    async with ui_server(kind, tmp_path, request) as srv:
        stored = await srv.client.put(
            srv.url + f"/__sngin/storage/{HOST}/value", params={"key": "greeting"},
            content=b"hello", headers={"Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        assert stored.status_code == 200
        with trio.fail_after(120):
            await trio.to_thread.run_sync(scenario, srv.url, folder)
    assert len(list(folder.glob("*.png"))) == 12


# --- a tenant's Host is not the admin origin ----------------------------------------------------

EVIL = "evil.test"
# The tenant's page: what its script can reach of the admin API from its own origin, and a
# cross-site login into the attacker's session (login CSRF) aimed at the admin origin.
EVIL_PAGE = """
return [==[<!doctype html><title>evil</title><pre id="out">running</pre><script>
(async () => {
  const lines = [];
  const tries = [["GET", "/__sngin/ui/"], ["GET", "/__sngin/ui/session"],
                 ["GET", "/__sngin/code"], ["POST", "/__sngin/tokens", '{"host": "ui.test"}'],
                 ["POST", "/__sngin/ui/login", '{"token": "x"}']];
  for (const [method, path, body] of tries) {
    const r = await fetch(path, {method, body, credentials: "include",
                                 headers: body ? {"Content-Type": "application/json"} : {}});
    lines.push(method + " " + path + " " + r.status);
  }
  document.getElementById("out").textContent = lines.join("\\n");
})();
</script>]==], 200, {["Content-Type"] = "text/html"}
"""
LOGIN_CSRF = """
return [[<!doctype html>
<form id="f" method="POST" enctype="text/plain" action="ADMIN/__sngin/ui/login">
<input name='{"token": "ATTACKER", "x": "' value='"}'></form>
<script>document.getElementById("f").submit()</script>]], 200, {["Content-Type"] = "text/html"}
"""


def tenant_host_scenario(base: str, port: int, folder: Path, attacker_token: str) -> None:
    evil = f"http://{EVIL}:{port}"
    with browser(f"--host-resolver-rules=MAP {EVIL} 127.0.0.1") as driver:
        steps = Steps(driver, base, folder)
        # The UI is not there on the tenant's Host.
        driver.get(evil + "/__sngin/ui/")
        assert '"error":"404 Not Found"' in driver.page_source
        steps.shot("no-ui-on-tenant-host")
        # A session cookie on the tenant's Host (one made there before this fix, say) is
        # ignored: the tenant's page reads no CSRF token and reaches nothing.
        driver.get(evil + "/")
        driver.add_cookie({"name": COOKIE, "value": sign(new_session(None), TOKEN),
                           "path": "/__sngin/"})  # fmt: skip
        driver.get(evil + "/")
        steps.wait.until(lambda d: d.find_element("css selector", "#out").text != "running")
        assert steps.element("#out").text.splitlines() == [
            "GET /__sngin/ui/ 404",
            "GET /__sngin/ui/session 404",
            "GET /__sngin/code 401",
            "POST /__sngin/tokens 401",
            "POST /__sngin/ui/login 404",
        ]
        steps.shot("tenant-page-reaches-nothing")
        # A cross-site form posting the attacker's token to the real login is refused, so the
        # operator's browser holds no session of the attacker's.
        driver.get(evil + "/login-csrf")
        steps.wait.until(lambda d: "login" in d.current_url and "refused" in d.page_source)
        steps.shot("login-csrf-refused")
        driver.get(base + "/__sngin/ui/session")
        assert '"logged_in":false' in driver.page_source
        assert attacker_token not in driver.page_source


async def test_a_tenant_host_can_neither_load_the_ui_nor_use_a_session(tmp_path):
    folder = ARTIFACTS / "tenant-host"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sites = tmp_path / "sites"
    (sites / EVIL).mkdir(parents=True)
    (sites / EVIL / "index.lua").write_text(EVIL_PAGE)
    async with running(sites, admin_token=TOKEN) as srv:
        made = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": EVIL},
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        attacker = made.json()["token"]
        (sites / EVIL / "login-csrf").mkdir()
        (sites / EVIL / "login-csrf" / "index.lua").write_text(
            LOGIN_CSRF.replace("ADMIN", srv.url).replace("ATTACKER", attacker)
        )
        with trio.fail_after(60):
            await trio.to_thread.run_sync(tenant_host_scenario, srv.url, srv.port, folder, attacker)
    assert len(list(folder.glob("*.png"))) == 3
