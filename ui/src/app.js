// sngin's web UI: one page over the admin JSON API, authenticated by the session cookie (the
// CSRF token from the login answer goes with every change). No inline script: the page's CSP.
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { EditorState, Prec } from "@codemirror/state";
import { StreamLanguage } from "@codemirror/language";
import { lua } from "@codemirror/legacy-modes/mode/lua";
import { setDiagnostics, lintGutter } from "@codemirror/lint";

const $ = (id) => document.getElementById(id);
const state = { csrf: null, host: null, tenant: null, path: null, etag: null, tail: null,
                timer: null, checkTimer: null, editor: null, dirty: false, loading: false };

function show(id) {
  for (const section of ["login", "tenants", "workspace"]) $(section).hidden = section !== id;
}

async function api(method, path, { json, body, headers = {} } = {}) {
  const options = { method, headers: { ...headers }, credentials: "same-origin" };
  if (method !== "GET" && state.csrf) options.headers["X-CSRF-Token"] = state.csrf;
  if (json !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  } else if (body !== undefined) {
    options.body = body;
  }
  const response = await fetch(path, options);
  if (response.status === 401 && !path.startsWith("/__sngin/ui/")) {
    loggedOut();
  }
  return response;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// --- session -----------------------------------------------------------------------------

async function boot() {
  const response = await api("GET", "/__sngin/ui/session");
  const session = response.status === 200 ? await response.json() : {};
  if (!session.logged_in) return loggedOut();
  state.csrf = session.csrf;
  state.host = session.host;
  $("who").textContent = session.host ? `site ${session.host}` : "operator";
  $("logout").hidden = false;
  if (session.host) return openTenant(session.host);
  return listTenants();
}

function loggedOut() {
  state.csrf = null;
  if (state.tail) state.tail.close();
  if (state.timer) clearInterval(state.timer);
  $("who").textContent = "";
  $("logout").hidden = true;
  show("login");
  $("token").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await api("POST", "/__sngin/ui/login", { json: { token: $("token").value } });
  $("token").value = "";
  if (response.status !== 200) {
    $("login-error").textContent = (await response.json()).error;
    return;
  }
  $("login-error").textContent = "";
  await boot();
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/__sngin/ui/logout");
  loggedOut();
});

// --- sites -------------------------------------------------------------------------------

let tenants = [];

async function listTenants() {
  show("tenants");
  const response = await api("GET", "/__sngin/code");
  tenants = (await response.json()).tenants || [];
  renderTenants();
}

function renderTenants() {
  const wanted = $("search").value.trim().toLowerCase();
  const list = $("tenant-list");
  list.replaceChildren();
  for (const tenant of tenants.filter((t) => t.includes(wanted))) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = tenant;
    link.addEventListener("click", (event) => { event.preventDefault(); openTenant(tenant); });
    item.append(link);
    list.append(item);
  }
}

$("search").addEventListener("input", renderTenants);
$("back").addEventListener("click", (event) => {
  event.preventDefault();
  if (state.tail) state.tail.close();
  if (state.timer) clearInterval(state.timer);
  if (state.host) return;  // a site's own session has one site
  listTenants();
});

async function openTenant(tenant) {
  state.tenant = tenant;
  show("workspace");
  $("tenant-name").textContent = tenant;
  setText("");
  setPath(null);
  await listFiles();
  await listKeys();
  await listCron();
  follow(tenant);
  chart(tenant);
}

async function listFiles() {
  const response = await api("GET", `/__sngin/code/${state.tenant}`);
  const files = (await response.json()).files || [];
  const list = $("file-list");
  list.replaceChildren();
  for (const file of files) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = file.path;
    link.dataset.path = file.path;
    if (file.path === state.path) link.className = "open";
    link.addEventListener("click", (event) => { event.preventDefault(); openFile(file.path); });
    item.append(link);
    list.append(item);
  }
  markDirty(state.dirty);
}

// --- the editor --------------------------------------------------------------------------

function editor() {
  if (state.editor) return state.editor;
  const keys = Prec.highest(keymap.of([
    { key: "Mod-s", preventDefault: true, run: () => { save(); return true; } },
    { key: "Mod-Enter", preventDefault: true, run: () => { run(); return true; } },
  ]));
  state.editor = new EditorView({
    parent: $("editor"),
    state: EditorState.create({
      doc: "",
      extensions: [basicSetup, keys, StreamLanguage.define(lua), lintGutter(),
        // The page's CSP allows styles from the server and this nonce only.
        EditorView.cspNonce.of(document.querySelector("meta[name=sngin-csp-nonce]").content),
        EditorView.updateListener.of((update) => {
          if (!update.docChanged) return;
          scheduleCheck();
          if (!state.loading) markDirty(true);
        })],
    }),
  });
  return state.editor;
}

function text() { return editor().state.doc.toString(); }

function setText(content) {
  state.loading = true;  // what the store holds: not an edit
  editor().dispatch({ changes: { from: 0, to: editor().state.doc.length, insert: content } });
  state.loading = false;
  markDirty(false);
}

// The open file (or none): the buttons that cannot act are disabled, and an empty editor says
// what to do.
function setPath(path) {
  state.path = path;
  $("file-name").textContent = path || "";
  $("empty-hint").hidden = Boolean(path);
  $("editor").hidden = !path;
  for (const id of ["save", "rename", "delete"]) $(id).disabled = !path;
  $("run").disabled = !path || !path.endsWith("index.lua");
  $("run").title = $("run").disabled ? "Run previews a script (a file named index.lua)"
    : "Ctrl/Cmd-Enter";
}

// Unsaved changes: marked on the file's name and in the file list; leaving the page asks.
function markDirty(dirty) {
  state.dirty = dirty;
  $("file-name").classList.toggle("unsaved", dirty);
  for (const link of document.querySelectorAll("#file-list a")) {
    link.classList.toggle("unsaved", dirty && link.dataset.path === state.path);
  }
}

window.addEventListener("beforeunload", (event) => {
  if (!state.dirty) return;
  event.preventDefault();
  event.returnValue = "";
});

async function openFile(path) {
  const response = await api("GET",
    `/__sngin/code/${state.tenant}/file?path=${encodeURIComponent(path)}`);
  if (response.status !== 200) return status((await response.json()).error, true);
  setPath(path);
  state.etag = response.headers.get("ETag");
  $("conflict").hidden = true;
  setText(await response.text());
  status("");
  await listFiles();
}

// Safe publishing: the file is checked before it is saved (a Lua file compiled in a worker,
// _sngin.json against its schema); one with errors is published only if the user says so.
async function problemsOf(source) {
  const path = state.path;
  if (!path.endsWith(".lua") && path !== "_sngin.json") return [];
  const response = await api("POST",
    `/__sngin/code/${state.tenant}/check?path=${encodeURIComponent(path)}`, { body: source });
  if (response.status !== 200) return [];  // the check could not run: the save itself answers
  return (await response.json()).errors;
}

function confirmPublish(errors) {
  const dialog = $("publish-dialog");
  $("publish-errors").replaceChildren(...errors.map((error) =>
    item(error.line ? `line ${error.line}: ${error.message}` : error.message)));
  dialog.returnValue = "";
  dialog.showModal();
  $("publish-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "publish"),
      { once: true });
  });
}

$("publish-anyway").addEventListener("click", () => $("publish-dialog").close("publish"));
$("publish-cancel").addEventListener("click", () => $("publish-dialog").close("cancel"));

async function save(etag = state.etag) {
  if (!state.path) return;
  const source = text();
  const errors = await problemsOf(source);
  if (errors.length && !(await confirmPublish(errors))) {
    return status(`not saved: ${errors.length} error${errors.length > 1 ? "s" : ""}`, true);
  }
  const condition = etag ? { "If-Match": etag } : { "If-None-Match": "*" };
  const response = await api("PUT",
    `/__sngin/code/${state.tenant}/file?path=${encodeURIComponent(state.path)}`,
    { body: source, headers: condition });
  const answer = await response.json();
  if (response.status === 412) return conflict(answer.current);
  if (response.status >= 300) return status(answer.error, true);
  state.etag = `"${answer.etag}"`;
  $("conflict").hidden = true;
  if (source === text()) markDirty(false);
  status("saved");
}

function conflict(current) {
  $("conflict").hidden = false;
  $("theirs").textContent = current ? current.content : "(deleted)";
  $("mine").textContent = text();
  status("conflict", true);
  $("keep-mine").onclick = () => save(current ? `"${current.etag}"` : null);
  $("take-theirs").onclick = () => {
    if (current) { setText(current.content); state.etag = `"${current.etag}"`; }
    $("conflict").hidden = true;
    status("took the saved version");
  };
}

function scheduleCheck() {
  clearTimeout(state.checkTimer);
  if (!state.path || !state.path.endsWith(".lua")) return;
  state.checkTimer = setTimeout(check, 400);
}

async function check() {
  const source = text();
  const response = await api("POST",
    `/__sngin/code/${state.tenant}/check?path=${encodeURIComponent(state.path)}`,
    { body: source });
  if (response.status !== 200 || source !== text()) return;
  const answer = await response.json();
  const doc = editor().state.doc;
  const diagnostics = answer.errors.map((error) => {
    const line = doc.line(Math.min(Math.max(error.line || 1, 1), doc.lines));
    return { from: line.from, to: line.to, severity: "error", message: error.message };
  });
  editor().dispatch(setDiagnostics(editor().state, diagnostics));
  $("editor").dataset.errors = JSON.stringify(answer.errors);
}

function scriptUrl(path) {
  const folder = path.replace(/(^|\/)index\.lua$/, "");
  return "/" + folder;
}

async function run() {
  if (!state.path || !state.path.endsWith("index.lua")) return status("only scripts run", true);
  status("running…");
  const response = await api("POST", `/__sngin/code/${state.tenant}/preview`, {
    json: { source: text(), path: state.path, request: { path: scriptUrl(state.path) } },
  });
  const answer = await response.json();
  if (response.status !== 200) return status(answer.error, true);
  $("preview").hidden = false;
  $("preview-status").textContent = `${answer.status}${answer.error ? " — " + answer.error : ""}`;
  $("preview-timing").textContent = `${answer.wall_ms} ms wall, ${answer.cpu_ms} ms CPU`;
  $("preview-headers").textContent = answer.headers.map(([k, v]) => `${k}: ${v}`).join("\n");
  $("preview-body").textContent = answer.body ?? "(binary body)";
  const sent = answer.sent.map((s) => `would send ${s.kind}: ${s.text || s.subject || ""}`);
  $("preview-logs").textContent = [...answer.logs, ...sent].join("\n");
  status("ran");
}

$("save").addEventListener("click", () => save());
$("run").addEventListener("click", () => run());

$("new-file").addEventListener("click", async () => {
  const path = prompt("New file (e.g. hello/index.lua, lib/util.lua, _sngin.json)");
  if (!path) return;
  setPath(path);
  state.etag = null;
  setText(path.endsWith("index.lua") ? "return 'Hello!'\n" : "");
  await save(null);
  await listFiles();
});

$("rename").addEventListener("click", async () => {
  if (!state.path) return;
  if (state.dirty) return status("save the file before renaming it", true);
  const target = prompt("Rename to", state.path);
  if (!target || target === state.path) return;
  // One server-side move of the saved version (412 if it changed or the target exists).
  const response = await api("POST", `/__sngin/code/${state.tenant}/rename?path=`
    + `${encodeURIComponent(state.path)}&to=${encodeURIComponent(target)}`,
    { headers: { "If-Match": state.etag } });
  const answer = await response.json();
  if (response.status !== 200) return status(`not renamed: ${answer.error}`, true);
  setPath(target);
  state.etag = `"${answer.etag}"`;
  status("renamed");
  await listFiles();
});

$("delete").addEventListener("click", async () => {
  if (!state.path || !confirm(`Delete ${state.path}?`)) return;
  const response = await api("DELETE",
    `/__sngin/code/${state.tenant}/file?path=${encodeURIComponent(state.path)}`,
    { headers: { "If-Match": state.etag } });
  if (response.status === 412) return conflict((await response.json()).current);
  if (response.status !== 200) return status((await response.json()).error, true);
  setText("");
  setPath(null);
  status("deleted");
  await listFiles();
});

// --- storage -------------------------------------------------------------------------------

async function listKeys() {
  const list = $("key-list");
  list.replaceChildren();
  const response = await api("GET", `/__sngin/storage/${state.tenant}?limit=200`);
  if (response.status !== 200) return;
  for (const { key } of (await response.json()).keys) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = key;
    link.addEventListener("click", (event) => { event.preventDefault(); editKey(key); });
    item.append(link);
    list.append(item);
  }
}

async function editKey(key) {
  const url = `/__sngin/storage/${state.tenant}/value?key=${encodeURIComponent(key)}`;
  const current = await (await api("GET", url)).text();
  const value = prompt(`${key} (empty: delete)`, current);
  if (value === null) return;
  await api(value === "" ? "DELETE" : "PUT", url, value === "" ? {} : { body: value });
  await listKeys();
}

// --- scheduled runs ------------------------------------------------------------------------

function item(text, className = "") {
  const li = document.createElement("li");
  li.textContent = text;
  if (className) li.className = className;
  return li;
}

async function listCron() {
  const entries = $("cron-list");
  const runs = $("cron-runs");
  entries.replaceChildren();
  runs.replaceChildren();
  const response = await api("GET", `/__sngin/code/${state.tenant}/cron`);
  if (response.status !== 200) return;
  const answer = await response.json();
  for (const entry of answer.entries) {
    const li = item(`${entry.schedule} ${entry.path} (next ${entry.next.replace("+00:00", "Z")}) `);
    const button = document.createElement("button");
    button.textContent = "Run now";
    button.dataset.index = entry.index;
    button.addEventListener("click", () => runCron(entry.index));
    li.append(button);
    entries.append(li);
  }
  for (const problem of answer.invalid) entries.append(item(`not used: ${problem}`, "error"));
  if (!answer.entries.length && !answer.invalid.length) entries.append(item("none"));
  for (const run of answer.runs.slice(0, 5)) {
    const when = new Date(run.tick * 1000).toISOString().slice(0, 19).replace("T", " ");
    const how = run.manual ? " (by hand)" : "";
    runs.append(item(`${when} [${run.index}] ${run.outcome} ${run.status}${how}`,
      run.outcome === "ok" ? "" : "error"));
  }
}

async function runCron(index) {
  status("running…");
  const response = await api("POST", `/__sngin/code/${state.tenant}/cron/run`, { json: { index } });
  const answer = await response.json();
  if (response.status !== 200) return status(answer.error, true);
  status(`run ${index}: ${answer.run.outcome} ${answer.run.status}`);
  await listCron();
}

// --- live log and charts -------------------------------------------------------------------

function follow(tenant) {
  if (state.tail) state.tail.close();
  $("tail").textContent = "";
  state.tail = new EventSource(`/__sngin/logs?host=${encodeURIComponent(tenant)}`);
  state.tail.onmessage = (event) => {
    let line = event.data;
    try {
      const record = JSON.parse(event.data);
      line = record.line ?? record.error ??
        `${record.method} ${record.path} ${record.status} ${record.wall_ms} ms`;
    } catch (error) { /* not JSON: shown as it is */ }
    const tail = $("tail");
    tail.textContent = (tail.textContent + line + "\n").split("\n").slice(-200).join("\n");
    tail.scrollTop = tail.scrollHeight;
  };
}

function chart(tenant) {
  if (state.timer) clearInterval(state.timer);
  $("charts").replaceChildren();
  const sample = async () => {
    const response = await api("GET", `/__sngin/code/${tenant}/series`);
    if (response.status !== 200 || state.tenant !== tenant) return;
    draw((await response.json()).points);
  };
  sample();
  state.timer = setInterval(sample, 10000);
}

function draw(points) {
  const charts = $("charts");
  charts.replaceChildren();
  for (const [name, label] of [["rps", "requests/s"], ["errors", "5xx"], ["cpu_ms", "CPU ms"],
                               ["p50_ms", "p50 ms"], ["p99_ms", "p99 ms"]]) {
    const values = points.map((p) => p[name] ?? 0);
    const last = points.length ? points[points.length - 1][name] : null;
    const caption = document.createElement("div");
    caption.className = "label";
    caption.dataset.chart = name;
    caption.textContent = `${label}: ${last === null || last === undefined ? "–" : last}`;
    charts.append(caption, sparkline(values));
  }
}

function sparkline(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 20");
  svg.setAttribute("preserveAspectRatio", "none");
  const top = Math.max(1, ...values);
  const points = values.map((v, i) =>
    `${(i / Math.max(values.length - 1, 1)) * 100},${20 - (v / top) * 18}`).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points || "0,20 100,20");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#1a4fb0");
  line.setAttribute("stroke-width", "1");
  svg.append(line);
  return svg;
}

boot();
