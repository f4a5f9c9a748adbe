"""The web UI in a real browser (Debian's chromium through Selenium), on the folder store and on
S3 (moto): log in, open a site, edit a script, Run shows the new output and a log line, Save,
the site serves it; a second session saving a stale copy gets the conflict view; a syntax error
is marked on its line; logout closes the UI again. A screenshot of each step is saved under
test-artifacts/ui/<store>/; the browser's console must stay free of errors."""

from __future__ import annotations

import itertools
import json
import shlex
import shutil
import subprocess
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
AXE = Path(__file__).resolve().parent.parent / "ui" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]}).then(
  (r) => done(r.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" "))}))),
  (e) => done([{id: "axe failed", impact: "critical", help: String(e), nodes: []}]));
"""

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
        self.audited: list[str] = []

    def shot(self, name: str) -> None:
        self.count += 1
        self.driver.save_screenshot(str(self.folder / f"{self.count:02d}-{name}.png"))

    def element(self, css: str):
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.visibility_of_element_located(("css selector", css)))

    def text_is(self, css: str, text: str) -> None:
        self.until(css, lambda shown: shown == text, f"== {text!r}")

    def text_has(self, css: str, text: str) -> None:
        self.until(css, lambda shown: text in shown, f"has {text!r}")

    def until(self, css: str, wanted, what: str) -> None:
        from selenium.common.exceptions import TimeoutException

        try:
            self.wait.until(lambda d: wanted(d.find_element("css selector", css).text))
        except TimeoutException:
            shown = self.driver.find_element("css selector", css).text
            self.shot("failed")
            logged = self.console_errors()
            raise AssertionError(f"{css} {what}: it shows {shown!r} (console: {logged})") from None

    def login(self) -> None:
        self.driver.get(self.base + "/__sngin/ui/")
        self.element("#token").send_keys(TOKEN)
        self.element("#login-button").click()

    def open_file(self, path: str) -> None:
        self.element(f"#site-rows a[data-host='{HOST}']").click()
        self.element(f"#file-list a[data-path='{path}']").click()
        self.text_is("#file-name", path)

    def type_over(self, source: str) -> None:
        from selenium.webdriver.common.keys import Keys

        content = self.element("#editor .cm-content")
        content.click()
        content.send_keys(Keys.CONTROL, "a")
        content.send_keys(Keys.DELETE)
        self.wait.until(lambda d: d.find_element("css selector", "#editor .cm-content").text == "")
        content.send_keys(source)

    def dialog(self, title: str, **fields: str) -> None:
        """Answer the page's dialog: fill its fields, then its OK button."""
        self.text_has("#ask-title", title)
        for name, value in fields.items():
            field = self.element(f"#ask-{name}")
            field.clear()
            field.send_keys(value)
        self.element("#ask-ok").click()

    def escaped(self, opener: str, title: str) -> None:
        """Open a dialog, press Escape: it closes, nothing is done, focus is back on `opener`."""
        from selenium.webdriver.common.keys import Keys

        self.element(opener).click()
        self.text_has("#ask-title", title)
        self.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        self.wait.until(lambda d: not d.find_element("css selector", "#ask").is_displayed())
        assert self.driver.switch_to.active_element == self.element(opener)

    def number(self, css: str) -> float:
        """The number an element shows; -1 while it shows none (or is being redrawn)."""
        from selenium.common.exceptions import StaleElementReferenceException

        try:
            return float(self.driver.find_element("css selector", css).text)
        except (StaleElementReferenceException, ValueError):
            return -1

    def gone(self, css: str) -> None:
        self.wait.until(lambda d: not d.find_elements("css selector", css))

    def axe(self, where: str) -> None:
        """axe-core on the page as it is: no serious or critical violation."""
        if not AXE.exists():
            pytest.fail(f"{AXE} is missing: run `npm ci` in ui/ (.ci/run does)")
        self.driver.set_script_timeout(60)
        self.driver.execute_script(AXE.read_text())
        found = self.driver.execute_async_script(AXE_RUN)
        serious = [v for v in found if v["impact"] in ("serious", "critical")]
        assert serious == [], f"axe-core on {where}: {serious}"
        self.audited.append(where)

    def editor_text(self) -> str:
        lines = self.driver.find_elements("css selector", "#editor .cm-content .cm-line")
        return "\n".join(line.text for line in lines)

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]


def unexpected(errors: list[str], *statuses: str) -> list[str]:
    expected = [f"the server responded with a status of {status}" for status in statuses]
    # (/favicon.ico: asked for by the browser itself on the API's JSON page, not by the UI)
    return [m for m in errors if not any(e in m for e in expected) and "/favicon.ico" not in m]


def live(base: str, host: str = HOST) -> httpx.Response:
    with httpx.Client() as client:
        return client.get(base + "/", headers={"Host": host})


def stored_value(base: str, key: str) -> httpx.Response:
    with httpx.Client() as client:
        return client.get(base + f"/__sngin/storage/{HOST}/value", params={"key": key},
                          headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip


SAVED = "log('ran')\nlocal a=1\nlocal b=2\nreturn'new output'"
STALE = "log('two')\nlocal a=1\nlocal b=2\nreturn'stale-copy'"
MERGED = "log('ran')\nlocal a=1\nlocal b=2\nreturn'stale-copy'"
ECHO = "return{method=request.method,test=request.headers['X-Test'],sent=request.body}"


def scenario(base: str, folder: Path, site_token: str) -> None:
    """The whole walk-through (blocking: run in a thread while the server serves)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    with browser() as first, browser() as second:
        one, two = Steps(first, base, folder), Steps(second, base, folder / "second")
        (folder / "second").mkdir()
        one.driver.get(base + "/__sngin/ui/")
        one.element("#token")
        one.axe("login")
        one.shot("login")
        one.login()
        one.element(f"#site-rows a[data-host='{HOST}']")
        one.axe("sites")
        one.shot("sites")
        one.open_file("index.lua")
        assert one.editor_text() == "return 'old output'"
        one.axe("editor")
        one.shot("editor")
        # A site's own token: one site, no way back to a list, and an editor that says what to do.
        two.driver.get(base + "/__sngin/ui/")
        two.element("#token").send_keys(site_token)
        two.element("#login-button").click()
        two.text_is("#tenant-name", HOST)
        two.text_has("#empty-hint", "Pick a file on the left")
        assert not two.driver.find_element("css selector", "#back").is_displayed()
        two.element("#file-list a[data-path='index.lua']").click()
        two.text_is("#file-name", "index.lua")  # the same version: saved after the first's

        # (No space typed outside strings: a space the browser sees at the end of a line as
        # it is typed can arrive as U+00A0, which Lua does not read as a space.)
        one.type_over(SAVED)
        assert "unsaved" in one.element("#file-name").get_attribute("class")
        one.element("#editor .cm-content").send_keys(Keys.CONTROL, Keys.ENTER)  # Run
        one.text_is("#preview-body", "new output")
        one.text_is("#preview-logs", "ran")
        one.shot("run")
        one.element("#editor .cm-content").send_keys(Keys.CONTROL, "s")
        one.text_is("#status", "saved")
        one.text_has("#toasts", "saved")
        assert "unsaved" not in (one.element("#file-name").get_attribute("class") or "")
        one.shot("saved")
        assert live(base).text == "new output"

        # Two sessions, one file: the stale save opens the merge view; one hunk is taken from
        # the server's version, the other kept, and the merged file is what the site serves.
        two.type_over(STALE)
        two.element("#save").click()
        two.element("#conflict .cm-mergeView")
        two.text_has(".merge-labels", "on the server")
        sides = two.driver.find_elements("css selector", "#merge .cm-content")
        assert "new output" in sides[0].text
        assert "stale-copy" in sides[1].text
        buttons = two.driver.find_elements("css selector", ".cm-merge-revert button")
        assert len(buttons) == 2  # two hunks
        two.shot("conflict")
        buttons[0].send_keys(Keys.ENTER)  # the first hunk, from the keyboard: the server's line
        two.wait.until(
            lambda d: "log('ran')" in d.find_elements("css selector", "#merge .cm-content")[1].text
        )
        two.element("#keep-mine").click()
        two.text_is("#status", "saved")
        assert two.editor_text() == MERGED
        assert live(base).text == "stale-copy"
        two.shot("merged")

        # The request builder: POST, a JSON body and a header reach the script as such.
        one.element("#file-list a[data-path='index.lua']").click()  # (reloaded: the merged one)
        one.text_is("#file-name", "index.lua")
        one.wait.until(lambda d: one.editor_text() == MERGED)
        one.type_over(ECHO)
        Select(one.element("#req-method")).select_by_visible_text("POST")
        Select(one.element("#req-kind")).select_by_value("json")
        one.element("#req-headers").send_keys("X-Test: yes")
        one.element("#req-body").send_keys('{"a": 1}')
        one.element("#run").click()
        one.text_has("#preview-status", "200")
        body = one.element("#preview-body").text
        assert json.loads(body) == {"method": "POST", "test": "yes", "sent": '{"a": 1}'}
        assert "\n" in body  # pretty-printed
        curl = one.element("#curl").text
        assert curl == (
            f"curl -X POST -H 'Host: {HOST}' -H 'X-Test: yes' -H 'Content-Type: "
            f"application/json' --data-binary '{{\"a\": 1}}' '{base}/'"
        )
        port = base.rsplit(":", 1)[1]
        assert one.element("#live-link").get_attribute("href") == f"http://{HOST}:{port}/"
        one.shot("request-builder")
        one.driver.execute_script("arguments[0].scrollIntoView()", one.element("#preview"))
        one.shot("preview")
        # Saved, the site answers the copied curl command as the preview did.
        one.element("#editor .cm-content").send_keys(Keys.CONTROL, "s")
        one.text_is("#status", "saved")
        made = subprocess.run(shlex.split(curl), capture_output=True, text=True, check=True)
        assert json.loads(made.stdout) == json.loads(body)
        # Remembered per file in this browser.
        one.driver.refresh()
        one.open_file("index.lua")
        assert Select(one.element("#req-method")).first_selected_option.text == "POST"
        assert one.element("#req-headers").get_attribute("value") == "X-Test: yes"

        # History: the versions kept, a diff against the editor, and a restore the site serves.
        one.element("#history-button").click()
        one.element("#version-rows tr")
        rows = one.driver.find_elements("css selector", "#version-rows tr")
        assert len(rows) == 3  # the merged version, the first session's save, 'old output'
        rows[1].find_element("css selector", "button").click()  # Diff
        one.element("#diff .cm-mergeView")
        assert "new output" in one.driver.find_elements("css selector", "#diff .cm-content")[0].text
        assert "X-Test" in one.driver.find_elements("css selector", "#diff .cm-content")[1].text
        one.axe("history")
        one.shot("history")
        rows[-1].find_elements("css selector", "button")[1].click()  # Restore the oldest
        one.dialog("Restore the version of")
        one.text_has("#status", "restored the version of")
        one.wait.until(lambda d: one.editor_text() == "return 'old output'")
        assert live(base).text == "old output"
        one.wait.until(lambda d: len(d.find_elements("css selector", "#version-rows tr")) == 4)

        # Dialogs: new file (Escape first: nothing made, focus back), rename, delete.
        one.element("#new-file").click()
        one.element("#ask-path")
        one.axe("new-file dialog")
        one.shot("dialog")
        one.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        one.wait.until(lambda d: not d.find_element("css selector", "#ask").is_displayed())
        assert one.driver.switch_to.active_element.get_attribute("id") == "new-file"
        one.element("#new-file").click()
        one.dialog("New file", path="lib/util.lua")
        one.element("#file-list a[data-path='lib/util.lua']")
        one.text_is("#status", "created lib/util.lua")
        one.escaped("#rename", "Rename lib/util.lua")
        one.element("#rename").click()
        one.dialog("Rename lib/util.lua", to="lib/tools.lua")
        one.element("#file-list a[data-path='lib/tools.lua']")
        one.gone("#file-list a[data-path='lib/util.lua']")
        one.escaped("#delete", "Delete lib/tools.lua?")
        one.element("#file-list a[data-path='lib/tools.lua']")  # still there
        one.element("#delete").click()
        one.dialog("Delete lib/tools.lua?")
        one.text_is("#status", "deleted lib/tools.lua")
        one.gone("#file-list a[data-path='lib/tools.lua']")
        # No file open: the editor says what to do, and the buttons that cannot act are off.
        one.text_has("#empty-hint", "Pick a file on the left")
        assert all(
            not one.driver.find_element("css selector", f"#{button}").is_enabled()
            for button in ("save", "run", "rename", "delete", "history-button")
        )
        one.shot("files")

        # Storage: a new key (its JSON checked), an edit, a delete, each in its dialog.
        one.escaped("#new-key", "New storage key")
        one.element("#new-key").click()
        one.dialog("New storage key", key="config", value='{"a":')
        one.text_has("#ask-error", "not valid JSON")
        one.dialog("New storage key", value='{"a": 2}')
        one.element("#key-list a[data-key='config']")
        assert stored_value(base, "config").text == '{"a": 2}'
        one.escaped("#key-list a[data-key='greeting']", "Edit greeting")
        assert stored_value(base, "greeting").text == "hello"
        one.element("#key-list a[data-key='greeting']").click()
        one.dialog("Edit greeting", value="edited in the UI")
        one.text_is("#status", "saved greeting")
        assert stored_value(base, "greeting").text == "edited in the UI"
        one.escaped("#key-list button[aria-label='delete key config']", "Delete config?")
        assert stored_value(base, "config").status_code == 200
        one.element("#key-list button[aria-label='delete key config']").click()
        one.dialog("Delete config?")
        one.gone("#key-list a[data-key='config']")
        assert stored_value(base, "config").status_code == 404
        one.shot("storage")
        # The site's scheduled runs: listed beside its files, and one run by hand.
        one.text_has("#cron-list", "0 3 * * * / (next ")
        one.element("#cron-list button").click()
        one.text_has("#cron-runs", "[0] ok 200 (by hand)")
        one.text_is("#status", "run 0: ok 200")
        one.shot("cron")

        # Safe publishing: a syntax error is marked; Save lists it; nothing is published
        # until the user says so, and the live site keeps answering meanwhile.
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
        one.element("#save").click()
        one.text_has("#ask-list", "line 1:")
        one.shot("publish-dialog")
        one.element("#ask-cancel").click()
        one.text_is("#status", "not saved: 1 error")
        assert (live(base).status_code, live(base).text) == (200, "old output")
        one.element("#save").click()
        one.element("#ask-list")
        one.driver.switch_to.active_element.send_keys(Keys.ESCAPE)  # Escape: a cancel too
        one.text_is("#status", "not saved: 1 error")
        one.element("#save").click()
        one.dialog("This file has errors")  # Publish anyway
        one.text_is("#status", "saved")
        assert live(base).status_code == 500

        # The failure left a replay bundle: replayed as it ran, then with a fix in the editor.
        def listed(d) -> bool:
            d.find_element("css selector", "#refresh-replays").click()
            return bool(d.find_elements("css selector", "#replay-list li"))

        one.wait.until(listed)
        one.text_has("#replay-list li", "GET / error")
        one.element("#replay-list li button").click()  # Replay
        one.text_has("#preview-status", "replay 500")
        one.text_is("#preview-timing", "matched the recording")
        one.type_over("return'fixed'")
        one.element("#replay-list li button:nth-of-type(2)").click()  # Replay my edits
        one.text_is("#preview-status", "replay 200")
        one.text_is("#preview-body", "fixed")
        one.text_is("#preview-timing", "differs from the recording")
        one.driver.execute_script("arguments[0].scrollIntoView()", one.element("#preview"))
        one.shot("replay")

        # The charts: the window's totals, a time axis, and the value under the pointer.
        one.text_has("#totals", "requests,")
        one.wait.until(
            lambda d: len(d.find_elements("css selector", "#charts svg text.tick")) >= 20
        )
        moves = itertools.cycle(range(-40, 40, 7))

        def hovered(d) -> bool:  # (the charts are redrawn every 10 s: move again until shown)
            from selenium.common.exceptions import StaleElementReferenceException

            try:
                chart = d.find_element("css selector", "#charts svg")
                ActionChains(d).move_to_element_with_offset(chart, next(moves), 0).perform()
                return ":" in d.find_element("css selector", "#charts .readout").text
            except StaleElementReferenceException:
                return False

        one.wait.until(hovered)

        # The sites list: the site's traffic, and a new site from the template.
        one.element("#back").click()
        one.dialog("Discard your changes to index.lua?")  # (the fix was only replayed)
        row = f"#site-rows tr:has(a[data-host='{HOST}']) td:nth-of-type(2)"  # its requests
        one.wait.until(lambda d: one.number(row) >= 5)
        one.element("#new-site").click()
        one.dialog("New site", host="Not a host!")
        one.text_has("#ask-error", "not a host name")
        one.dialog("New site", host="new.test")
        one.text_is("#tenant-name", "new.test")
        one.text_is("#file-name", "index.lua")  # open, from the template
        assert "hello" in one.editor_text()
        assert not one.driver.find_elements("css selector", ".cm-lint-marker-error")  # not its
        assert live(base, "new.test").json() == {"hello": "world", "path": "/"}
        one.shot("new-site")

        one.element("#logout").click()
        one.element("#token")
        one.shot("logged-out")
        one.driver.get(base + "/__sngin/code")
        assert "missing or wrong admin token" in one.driver.page_source
        one.shot("closed")
        assert one.audited == ["login", "sites", "editor", "history", "new-file dialog"]
        # No script error and no CSP violation; only the answers the steps asked for (the 401
        # of the API after logout, the 412 of the stale save, the storage key's 404 while a new
        # one is checked) are logged by the browser.
        assert unexpected(one.console_errors(), "401", "404") == []
        assert unexpected(two.console_errors(), "412") == []


CRON = '{"cron": [{"schedule": "0 3 * * *", "path": "/"}]}'  # a schedule the test never reaches


@asynccontextmanager
async def ui_server(kind: str, tmp_path: Path, request):
    sites = tmp_path / "sites"
    if kind == "folder":
        (sites / HOST).mkdir(parents=True)
        (sites / HOST / "index.lua").write_text("return 'old output'")
        (sites / HOST / "_sngin.json").write_text(CRON)
        async with running(sites, admin_token=TOKEN, tenant_configs=True, deadline_s=240) as srv:
            yield srv
        return
    proxy, bucket = request.getfixturevalue("proxy"), request.getfixturevalue("bucket")
    bucket.client.put_bucket_versioning(  # (the history panel lists the bucket's versions)
        Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"}
    )
    bucket.put(f"code/{HOST}/index.lua", "return 'old output'")
    bucket.put(f"code/{HOST}/_sngin.json", CRON)
    changes = {"s3": S3Settings(bucket=bucket.name, prefix="code")}
    async with (
        code_cache(proxy, bucket, prefix="code", ttl_s=3600) as cache,
        running(sites, store=cache, admin_token=TOKEN, settings_changes=changes,
                tenant_configs=True, deadline_s=240) as srv,
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
        made = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": HOST},
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        with trio.fail_after(240):
            await trio.to_thread.run_sync(scenario, srv.url, folder, made.json()["token"])
    assert len(list(folder.glob("*.png"))) == 18


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
