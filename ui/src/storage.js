// The site's storage keys: listed, added, edited (JSON checked when the value is JSON), deleted,
// each through a dialog.
import { $, state, api, answerOf, status, el, linkList } from "./core.js";
import { ask } from "./dialogs.js";

const valueUrl = (key) => `/__sngin/storage/${state.tenant}/value?key=${encodeURIComponent(key)}`;

export async function listKeys() {
  const response = await api("GET", `/__sngin/storage/${state.tenant}?limit=200`);
  const keys = response.status === 200 ? (await response.json()).keys : [];
  linkList($("key-list"), keys, {
    label: ({ key }) => key, pick: ({ key }) => editKey(key), data: ({ key }) => ({ key }),
    extras: ({ key }) => [el("button", { className: "small", "aria-label": `delete key ${key}`,
                                         title: `delete ${key}`, onclick: () => deleteKey(key) }, "\u00d7")],
  });
  $("keys-empty").hidden = keys.length > 0;
}

// A value that was JSON stays JSON; one that starts like JSON must be JSON.
function jsonProblem(before, after) {
  let wasJson = false;
  try { JSON.parse(before); wasJson = /^\s*[[{"]/.test(before); } catch (error) { wasJson = false; }
  if (!wasJson && !/^\s*[[{]/.test(after)) return null;
  try { JSON.parse(after); return null; } catch (error) { return `not valid JSON: ${error.message}`; }
}

async function put(key, value, verb) {
  const response = await api("PUT", valueUrl(key), { body: value });
  if (response.status !== 200) return status(`not ${verb}: ${(await answerOf(response)).error}`, true);
  status(`${verb} ${key}`);
  await listKeys();
}

export async function newKey() {
  const answer = await ask({
    title: "New storage key", ok: "Add",
    fields: [{ name: "key", label: "Key" }, { name: "value", label: "Value", multiline: true }],
    check: async ({ key, value }) => {
      if (!key) return "a key cannot be empty";
      if ((await api("GET", valueUrl(key))).status === 200) return `${key} exists: edit it instead`;
      return jsonProblem("", value);
    },
  });
  if (answer) await put(answer.key, answer.value, "added");
}

async function editKey(key) {
  const response = await api("GET", valueUrl(key));
  if (response.status !== 200) return status(`${key}: ${(await answerOf(response)).error}`, true);
  const current = await response.text();
  const answer = await ask({
    title: `Edit ${key}`, ok: "Save", fields: [{ name: "value", label: "Value", value: current, multiline: true }],
    check: async ({ value }) => jsonProblem(current, value),
  });
  if (answer) await put(key, answer.value, "saved");
}

async function deleteKey(key) {
  const sure = await ask({ title: `Delete ${key}?`, ok: "Delete", danger: true,
                           text: "The site's scripts no longer find it." });
  if (!sure) return;
  const response = await api("DELETE", valueUrl(key));
  if (response.status !== 200) return status(`not deleted: ${(await answerOf(response)).error}`, true);
  status(`deleted ${key}`);
  await listKeys();
}
