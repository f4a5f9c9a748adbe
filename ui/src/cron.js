// The site's scheduled runs: its entries (with their next tick and a Run now), what it would not
// use, and the last runs.
import { $, state, api, status, el, item } from "./core.js";

export async function listCron() {
  const entries = $("cron-list");
  const runs = $("cron-runs");
  entries.replaceChildren();
  runs.replaceChildren();
  const response = await api("GET", `/__sngin/code/${state.tenant}/cron`);
  if (response.status !== 200) return;
  const answer = await response.json();
  for (const entry of answer.entries) {
    const li = item(`${entry.schedule} ${entry.path} (next ${entry.next.replace("+00:00", "Z")}) `);
    li.append(el("button", { className: "small", dataset: { index: entry.index },
      "aria-label": `Run now: ${entry.schedule} ${entry.path}`, onclick: () => runCron(entry.index) }, "Run now"));
    entries.append(li);
  }
  for (const problem of answer.invalid) entries.append(item(`not used: ${problem}`, "error"));
  if (!answer.entries.length && !answer.invalid.length) {
    entries.append(item("none: add \"cron\" entries to _sngin.json", "hint"));
  }
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
  status(`run ${index}: ${answer.run.outcome} ${answer.run.status}`, answer.run.outcome !== "ok");
  await listCron();
}
