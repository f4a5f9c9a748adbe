// History: the versions the store keeps of the open file (newest first), a diff of any of them
// against the editor's text, and restore (a conditional write: 412 if the file changed).
import { $, state, api, answerOf, status, el } from "./core.js";
import { ask } from "./dialogs.js";
import { text, mergeView } from "./editor.js";

let diff = null;
const query = (path) => `path=${encodeURIComponent(path)}`;
export const historyHooks = { restored: async () => {} };

export function closeHistory() {
  if (diff) diff.destroy();
  diff = null;
  $("history").hidden = true;
  $("history-button").setAttribute("aria-expanded", "false");
}

export async function toggleHistory() {
  if (!$("history").hidden) return closeHistory();
  $("history").hidden = false;
  $("history-button").setAttribute("aria-expanded", "true");
  await listVersions();
}

async function listVersions() {
  if (diff) diff.destroy();
  diff = null;
  $("diff").replaceChildren();
  $("diff-title").textContent = "";
  const response = await api("GET", `/__sngin/code/${state.tenant}/history?${query(state.path)}`);
  const answer = await answerOf(response);
  if (response.status !== 200) return status(`no history: ${answer.error}`, true);
  const rows = answer.versions.map((version) => el("tr", {},
    el("td", {}, version.saved.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC")),
    el("td", {}, `${version.size} B`),
    el("td", {}, el("code", { title: version.etag }, version.etag.slice(0, 12))),
    el("td", {},
      el("button", { onclick: () => showDiff(version), "aria-label": `Diff: the version of ${version.saved} against the current text` }, "Diff"),
      " ",
      el("button", { onclick: () => restore(version), "aria-label": `Restore: the version of ${version.saved}` }, "Restore"))));
  $("version-rows").replaceChildren(...rows);
  $("versions").hidden = !rows.length;
  $("history-empty").hidden = rows.length > 0;
}

async function read(version) {
  const response = await api("GET",
    `/__sngin/code/${state.tenant}/file?${query(state.path)}&version=${encodeURIComponent(version.id)}`);
  return response.status === 200 ? response.text() : null;
}

async function showDiff(version) {
  const content = await read(version);
  if (content === null) return status("that version cannot be read any more", true);
  $("diff-title").textContent = `${version.saved} (left) against the editor's text (right)`;
  if (diff) diff.destroy();
  diff = mergeView($("diff"), { a: content, b: text(), labels: [`version of ${version.saved}`, "current"] });
}

async function restore(version) {
  const sure = await ask({
    title: `Restore the version of ${version.saved}?`, ok: "Restore",
    text: state.dirty ? "It replaces the saved file, and your unsaved changes are dropped."
      : "It replaces the saved file; the version it replaces joins the history.",
  });
  if (!sure) return;
  const response = await api("POST", `/__sngin/code/${state.tenant}/restore?${query(state.path)}`
    + `&version=${encodeURIComponent(version.id)}`, { headers: { "If-Match": state.etag } });
  const answer = await answerOf(response);
  if (response.status !== 200) return status(`not restored: ${answer.error}`, true);
  await historyHooks.restored();
  status(`restored the version of ${version.saved}`);
  await listVersions();
}
