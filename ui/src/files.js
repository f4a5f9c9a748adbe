// A site's files: list, open, save (checked first: safe publishing), conflicts in a merge view,
// new file, rename (one server-side move), delete.
import { $, state, api, answerOf, status, linkList } from "./core.js";
import { ask } from "./dialogs.js";
import { text, setText, showErrors, mergeView } from "./editor.js";

const fileUrl = (path) => `/__sngin/code/${state.tenant}/file?path=${encodeURIComponent(path)}`;
let checkTimer = null;
let merge = null;
export const hooks = { opened: () => {} };

export async function listFiles() {
  const response = await api("GET", `/__sngin/code/${state.tenant}`);
  const files = (await answerOf(response)).files || [];
  linkList($("file-list"), files, {
    label: (file) => file.path, pick: (file) => openFile(file.path),
    isOpen: (file) => file.path === state.path, data: (file) => ({ path: file.path }),
  });
  $("files-empty").hidden = files.length > 0;
  markDirty(state.dirty);
}

// The open file (or none): the buttons that cannot act are disabled, and an empty editor says
// what to do.
export function setPath(path) {
  const before = state.path;
  state.path = path;
  $("file-name").textContent = path || "";
  $("empty-hint").hidden = Boolean(path);
  $("editor").hidden = !path;
  for (const id of ["save", "rename", "delete", "history-button"]) $(id).disabled = !path;
  const script = Boolean(path) && path.endsWith("index.lua");
  $("run").disabled = !script;
  $("run").title = script ? "Ctrl/Cmd-Enter" : "Run previews a script (a file named index.lua)";
  $("request").hidden = !script;
  closeConflict();
  hooks.opened(path, before);
}

// Unsaved changes: marked on the file's name and in the file list; leaving the page asks.
export function markDirty(dirty) {
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

export function edited(byUser) {
  scheduleCheck();
  if (byUser) markDirty(true);
}

export async function openFile(path, { reload = false } = {}) {
  if (state.dirty && !reload) {
    const drop = await ask({ title: `Discard your changes to ${state.path}?`, ok: "Discard", danger: true,
                             text: "They are not saved. Cancel, then Save, to keep them." });
    if (!drop) return;
  }
  const response = await api("GET", fileUrl(path));
  if (response.status !== 200) return status((await answerOf(response)).error, true);
  const content = await response.text();
  setPath(path);
  state.etag = response.headers.get("ETag");
  setText(content);
  markDirty(false);
  $("status").textContent = "";
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

export async function save(etag = state.etag, source = text()) {
  if (!state.path) return;
  const errors = await problemsOf(source);
  if (errors.length) {
    const publish = await ask({
      title: "This file has errors",
      text: "Published now, the site would answer with them. Publish anyway?",
      list: errors.map((e) => (e.line ? `line ${e.line}: ${e.message}` : e.message)),
      ok: "Publish anyway", danger: true,
    });
    if (!publish) return status(`not saved: ${errors.length} error${errors.length > 1 ? "s" : ""}`, true);
  }
  const condition = etag ? { "If-Match": etag } : { "If-None-Match": "*" };
  const response = await api("PUT", fileUrl(state.path), { body: source, headers: condition });
  const answer = await answerOf(response);
  if (response.status === 412) return conflict(answer.current);
  if (response.status >= 300) return status(`not saved: ${answer.error}`, true);
  state.etag = `"${answer.etag}"`;
  if (merge) { setText(source); closeConflict(); }
  if (source === text()) markDirty(false);
  status("saved");
  if (response.status === 201) await listFiles();
}

// The file changed since it was opened: the server's version and yours side by side; each
// changed hunk can be taken from the server's, and the merged result saved.
function conflict(current) {
  $("conflict").hidden = false;
  $("editor").hidden = true;
  status("conflict: the file changed on the server", true);
  const server = current ? current.content ?? "(not text)" : "";
  merge = mergeView($("merge"), { a: server, b: text(), labels: ["on the server", "yours"], editable: true });
  $("conflict-gone").hidden = Boolean(current);
  $("keep-mine").onclick = () => save(current ? `"${current.etag}"` : null, merge.b.state.doc.toString());
  $("take-theirs").onclick = () => {
    if (current) { setText(server); state.etag = `"${current.etag}"`; markDirty(false); }
    closeConflict();
    status("took the server's version");
  };
  $("keep-mine").focus();
}

export function closeConflict() {
  if (merge) merge.destroy();
  merge = null;
  $("conflict").hidden = true;
  $("editor").hidden = !state.path;
}

function scheduleCheck() {
  clearTimeout(checkTimer);
  if (!state.path || !state.path.endsWith(".lua")) return;
  checkTimer = setTimeout(check, 400);
}

async function check() {
  const source = text();
  const response = await api("POST",
    `/__sngin/code/${state.tenant}/check?path=${encodeURIComponent(state.path)}`, { body: source });
  if (response.status !== 200 || source !== text()) return;
  showErrors((await response.json()).errors);
}

const PATH_HINT = "letters, digits and . _ ~ + @ - in segments; a script is FOLDER/index.lua";

function badPath(path) {
  if (!/^([A-Za-z0-9_~+@-][A-Za-z0-9._~+@-]*\/)*([A-Za-z0-9_~+@-][A-Za-z0-9._~+@-]*)$/.test(path)) {
    return `not a file path (${PATH_HINT})`;
  }
  if (!path.endsWith(".lua") && path !== "_sngin.json") return "a file is Lua (.lua) or _sngin.json";
  return null;
}

export async function newFile() {
  const answer = await ask({
    title: "New file", ok: "Create",
    fields: [{ name: "path", label: "Path (e.g. hello/index.lua, lib/util.lua, _sngin.json)" }],
    check: async ({ path }) => badPath(path.trim()),
  });
  if (!answer) return;
  const path = answer.path.trim();
  const content = path.endsWith("index.lua") ? "return 'Hello!'\n" : path.endsWith(".json") ? "{}\n" : "";
  const response = await api("PUT", fileUrl(path), { body: content, headers: { "If-None-Match": "*" } });
  const made = await answerOf(response);
  if (response.status === 412) return status(`not created: ${path} exists`, true);
  if (response.status !== 201) return status(`not created: ${made.error}`, true);
  await openFile(path);
  status(`created ${path}`);
}

export async function rename() {
  if (!state.path) return;
  if (state.dirty) return status("save the file before renaming it", true);
  const from = state.path;
  const answer = await ask({
    title: `Rename ${from}`, ok: "Rename", fields: [{ name: "to", label: "New path", value: from }],
    check: async ({ to }) => (to.trim() === from ? "that is its name now" : badPath(to.trim())),
  });
  if (!answer) return;
  const to = answer.to.trim();
  // One server-side move of the saved version (412 if it changed or the target exists).
  const response = await api("POST", `/__sngin/code/${state.tenant}/rename?path=`
    + `${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`, { headers: { "If-Match": state.etag } });
  const moved = await answerOf(response);
  if (response.status !== 200) return status(`not renamed: ${moved.error}`, true);
  setPath(to);
  state.etag = `"${moved.etag}"`;
  status(`renamed to ${to}`);
  await listFiles();
}

export async function remove() {
  if (!state.path) return;
  const path = state.path;
  const sure = await ask({
    title: `Delete ${path}?`, ok: "Delete", danger: true,
    text: "The site stops serving it at once. The folder store and a versioned bucket keep it in the history.",
  });
  if (!sure) return;
  const response = await api("DELETE", fileUrl(path), { headers: { "If-Match": state.etag } });
  const answer = await answerOf(response);
  if (response.status === 412) return conflict(answer.current);
  if (response.status !== 200) return status(`not deleted: ${answer.error}`, true);
  setText("");
  markDirty(false);
  setPath(null);
  status(`deleted ${path}`);
  await listFiles();
}
