// Run: a request built by hand (method, path, query, headers, body as JSON, form or raw),
// remembered per file in this browser; the preview of its answer; the same request as curl;
// the script's live URL.
import { $, state, api, answerOf, status } from "./core.js";
import { text } from "./editor.js";

const FIELDS = ["req-method", "req-path", "req-query", "req-headers", "req-kind", "req-body"];
const memoryKey = () => `sngin-request:${state.tenant}/${state.path}`;

export function scriptUrl(path) {
  return "/" + path.replace(/(^|\/)index\.lua$/, "");
}

// A file's request as it was left in this browser, or the defaults for its route.
export function loadRequest(path) {
  if (!path || !path.endsWith("index.lua")) return;
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(memoryKey()) || "{}"); } catch (error) { saved = {}; }
  const defaults = { "req-method": "GET", "req-path": scriptUrl(path), "req-query": "",
                     "req-headers": "", "req-kind": "raw", "req-body": "" };
  for (const id of FIELDS) $(id).value = saved[id] ?? defaults[id];
  $("req-error").textContent = "";
  updateLinks();
}

function remember() {
  if (!state.path) return;
  localStorage.setItem(memoryKey(), JSON.stringify(Object.fromEntries(FIELDS.map((id) => [id, $(id).value]))));
  updateLinks();
}

for (const id of FIELDS) $(id).addEventListener("input", remember);

// The request as the preview API takes it, or an error naming the field that is wrong.
function built() {
  const headers = {};
  for (const line of $("req-headers").value.split("\n")) {
    if (!line.trim()) continue;
    const colon = line.indexOf(":");
    if (colon < 1) return { error: `headers: "${line.trim()}" is not "Name: value"` };
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  }
  const has = (name) => Object.keys(headers).some((h) => h.toLowerCase() === name);
  let body = $("req-body").value;
  const kind = $("req-kind").value;
  if (kind === "json" && body.trim()) {
    try { JSON.parse(body); } catch (error) { return { error: `body: not JSON (${error.message})` }; }
    if (!has("content-type")) headers["Content-Type"] = "application/json";
  } else if (kind === "form") {
    // One name=value per line (or already a=1&b=2), sent URL-encoded.
    const form = new URLSearchParams();
    for (const line of body.split(/\n|&/)) {
      if (!line.trim()) continue;
      const [name, ...rest] = line.split("=");
      form.append(name.trim(), rest.join("=").trim());
    }
    body = form.toString();
    if (!has("content-type")) headers["Content-Type"] = "application/x-www-form-urlencoded";
  }
  const method = $("req-method").value;
  const path = $("req-path").value.trim() || "/";
  return { request: { method, path, query: $("req-query").value.trim().replace(/^\?/, ""), headers, body } };
}

const quote = (s) => `'${s.replace(/'/g, "'\\''")}'`;

function publicBase() {
  return state.public || `${location.protocol}//${location.host}`;
}

export function curlOf(request) {
  const url = publicBase() + request.path + (request.query ? `?${request.query}` : "");
  const parts = ["curl"];
  if (request.method !== "GET") parts.push("-X", request.method);
  parts.push("-H", quote(`Host: ${state.tenant}`));
  for (const [name, value] of Object.entries(request.headers)) parts.push("-H", quote(`${name}: ${value}`));
  if (request.body) parts.push("--data-binary", quote(request.body));
  parts.push(quote(url));
  return parts.join(" ");
}

function updateLinks() {
  if (!state.path || !state.path.endsWith("index.lua")) return;
  const port = new URL(publicBase()).port;
  const live = `http://${state.tenant}${port ? ":" + port : ""}${scriptUrl(state.path)}`;
  $("live-link").href = live;
  $("live-link").textContent = live;
  const made = built();
  $("curl").textContent = made.error ? "" : curlOf(made.request);
}

$("copy-curl").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("curl").textContent);
    status("curl command copied");
  } catch (error) {
    // (no clipboard, e.g. plain HTTP to a remote host: the command stays shown to copy)
    getSelection().selectAllChildren($("curl"));
    status("select and copy the command shown", true);
  }
});

export async function run() {
  if (!state.path || !state.path.endsWith("index.lua")) return;
  const made = built();
  $("req-error").textContent = made.error || "";
  if (made.error) return status(`not run: ${made.error}`, true);
  status("running…");
  const response = await api("POST", `/__sngin/code/${state.tenant}/preview`,
    { json: { source: text(), path: state.path, request: made.request } });
  const answer = await answerOf(response);
  $("preview").hidden = false;
  $("preview").classList.toggle("refused", response.status !== 200);
  if (response.status !== 200) {
    // Refused as a request would be (quarantined, disabled, over its rate) or a bad request.
    $("preview-status").textContent = `refused (${response.status})`;
    $("preview-timing").textContent = "";
    $("preview-headers").textContent = "";
    $("preview-body").textContent = answer.error;
    $("preview-logs").textContent = "";
    return status(`not run: ${answer.error}`, true);
  }
  $("preview-status").textContent = `${answer.status}${answer.error ? " — " + answer.error : ""}`;
  $("preview-timing").textContent = `${answer.wall_ms} ms wall, ${answer.cpu_ms} ms CPU`;
  $("preview-headers").textContent = answer.headers.map(([k, v]) => `${k}: ${v}`).join("\n");
  $("preview-body").textContent = shownBody(answer);
  $("preview-summary").textContent = answer.body_truncated
    ? `summarised: the first 256 KiB of ${answer.body_bytes} bytes` : "";
  const sent = answer.sent.map((s) => `would send ${s.kind}: ${s.text || s.subject || ""}`);
  const writes = Object.entries(answer.storage_writes || {}).map(([key, value]) =>
    (value === null ? `storage (not kept): delete ${key}` : `storage (not kept): ${key} = ${value}`));
  $("preview-logs").textContent = [...answer.logs, ...sent, ...writes].join("\n");
  status(`ran: ${answer.status}`);
}

// JSON pretty-printed; everything else (HTML too) shown as text, never rendered.
function shownBody(answer) {
  if (answer.body === null || answer.body === undefined) return "(binary body)";
  const type = (answer.headers.find(([k]) => k.toLowerCase() === "content-type") || [, ""])[1];
  if (/json/i.test(type)) {
    try { return JSON.stringify(JSON.parse(answer.body), null, 2); } catch (error) { /* as sent */ }
  }
  return answer.body;
}

