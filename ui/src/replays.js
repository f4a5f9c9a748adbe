// The site's recent failures (replay bundles): each replayed on the server as it ran, or with
// the editor's text when the open file is its script ("replay my edits"); the answer shown in
// the preview with whether it matched the recording and where it diverged.
import { $, state, api, answerOf, status, el } from "./core.js";
import { text } from "./editor.js";

export async function listReplays() {
  const response = await api("GET", `/__sngin/code/${state.tenant}/replays`);
  const found = response.status === 200 ? (await response.json()).replays.slice(0, 10) : [];
  $("replay-list").replaceChildren(...found.map((bundle) => {
    const when = new Date(bundle.time * 1000).toISOString().slice(11, 19);
    return el("li", { dataset: { id: bundle.id } },
      `${when} ${bundle.method} ${bundle.path} ${bundle.outcome} `,
      el("button", { className: "small", "aria-label": `Replay: ${bundle.method} ${bundle.path} at ${when}`,
                     onclick: () => replay(bundle, false) }, "Replay"),
      " ",
      el("button", { className: "small", "aria-label": `Replay my edits: ${bundle.method} ${bundle.path} at ${when}`,
                     onclick: () => replay(bundle, true) }, "Replay my edits"));
  }));
  $("replays-empty").hidden = found.length > 0;
}

function scriptFile(path) {
  const folder = path.replace(/^\/+|\/+$/g, "");
  return folder ? `${folder}/index.lua` : "index.lua";
}

async function replay(bundle, withEdits) {
  const body = {};
  if (withEdits) {
    if (state.path !== scriptFile(bundle.path)) {
      return status(`open ${scriptFile(bundle.path)} to replay your edits of it`, true);
    }
    body.source = text();
  }
  status("replaying…");
  const response = await api("POST",
    `/__sngin/code/${state.tenant}/replays/${encodeURIComponent(bundle.id)}/run`, { json: body });
  const answer = await answerOf(response);
  if (response.status !== 200) return status(`not replayed: ${answer.error}`, true);
  $("preview").hidden = false;
  $("preview").classList.remove("refused");
  $("preview-status").textContent = `replay ${answer.status}${answer.error ? " — " + answer.error : ""}`;
  $("preview-timing").textContent = answer.matched ? "matched the recording" : "differs from the recording";
  $("preview-summary").textContent = answer.divergences.length
    ? `diverged: ${answer.divergences.join("; ")}` : "";
  $("preview-headers").textContent = answer.headers.map(([k, v]) => `${k}: ${v}`).join("\n");
  $("preview-body").textContent = answer.body;
  $("preview-logs").textContent = answer.logs.join("\n");
  status(`replayed: ${answer.status}, ${answer.matched ? "matched" : "differs"}`);
}
