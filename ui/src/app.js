// sngin's web UI: one page over the admin JSON API, authenticated by the session cookie (the
// CSRF token from the login answer goes with every change). No inline script: the page's CSP.
// Each part of the page is a module; this one logs in and out and moves between them.
import { $, state, api, answerOf } from "./core.js";
import { createEditor } from "./editor.js";
import { listFiles, setPath, openFile, save, newFile, rename, remove, edited, hooks, markDirty } from "./files.js";
import { ask } from "./dialogs.js";
import { run, loadRequest } from "./builder.js";
import { toggleHistory, closeHistory, historyHooks } from "./history.js";
import { listKeys, newKey } from "./storage.js";
import { listCron } from "./cron.js";
import { listReplays } from "./replays.js";
import { follow, stopFollowing } from "./tail.js";
import { chart, stopCharts } from "./charts.js";
import { listSites, newSite, sitesHooks } from "./sites.js";

function show(id) {
  for (const section of ["login", "tenants", "workspace"]) $(section).hidden = section !== id;
}

async function boot() {
  const response = await api("GET", "/__sngin/ui/session");
  const session = response.status === 200 ? await response.json() : {};
  if (!session.logged_in) return loggedOut();
  state.csrf = session.csrf;
  state.host = session.host;
  state.public = session.public;
  $("who").textContent = session.host ? `site ${session.host}` : "operator";
  $("logout").hidden = false;
  $("back").hidden = Boolean(session.host);  // a site's own session has one site
  if (session.host) return openTenant(session.host);
  return openSites();
}

function leaveSite() {
  stopFollowing();
  stopCharts();
  state.tenant = null;
}

function loggedOut() {
  state.csrf = null;
  leaveSite();
  $("who").textContent = "";
  $("logout").hidden = true;
  show("login");
  $("token").focus();
}
state.onLoggedOut = loggedOut;

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await api("POST", "/__sngin/ui/login", { json: { token: $("token").value } });
  $("token").value = "";
  if (response.status !== 200) {
    $("login-error").textContent = (await answerOf(response)).error;
    return;
  }
  $("login-error").textContent = "";
  await boot();
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/__sngin/ui/logout");
  loggedOut();
});

async function openSites() {
  leaveSite();
  show("tenants");
  await listSites();
}

async function openTenant(tenant) {
  state.tenant = tenant;
  show("workspace");
  $("tenant-name").textContent = tenant;
  setPath(null);
  await Promise.all([listFiles(), listKeys(), listCron(), listReplays()]);
  follow(tenant);
  chart(tenant, () => state.tenant);
}

sitesHooks.open = openTenant;
sitesHooks.openFile = openFile;
hooks.opened = (path, before) => {
  if (path !== before) closeHistory();  // (a restore reopens the same file: the list stays)
  loadRequest(path);
};
historyHooks.restored = async () => openFile(state.path, { reload: true });

$("back").addEventListener("click", async (event) => {
  event.preventDefault();
  if (state.host) return;
  if (state.dirty && !(await ask({ title: `Discard your changes to ${state.path}?`, ok: "Discard",
                                   danger: true, text: "They are not saved." }))) return;
  markDirty(false);
  openSites();
});
$("new-site").addEventListener("click", () => newSite());
$("new-file").addEventListener("click", () => newFile());
$("new-key").addEventListener("click", () => newKey());
$("save").addEventListener("click", () => save());
$("run").addEventListener("click", () => run());
$("rename").addEventListener("click", () => rename());
$("delete").addEventListener("click", () => remove());
$("history-button").addEventListener("click", () => toggleHistory());
$("refresh-replays").addEventListener("click", () => listReplays());

createEditor({ save: () => save(), run: () => run(), changed: edited });
boot();
