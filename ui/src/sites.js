// The operator's sites: each with its last ten minutes (one summary call for all of them) and
// its quarantine; search; a new site from a template.
import { $, state, api, answerOf, status, el } from "./core.js";
import { ask } from "./dialogs.js";

let sites = [];
export const sitesHooks = { open: async () => {}, openFile: async () => {} };

const TEMPLATE = `-- The script for http://HOST/: what it returns is the answer
-- (a string, or a table sent as JSON), with an optional status and headers.
return {hello = "world", path = request.path}
`;

export async function listSites() {
  const response = await api("GET", "/__sngin/code?summary=1");
  const answer = await answerOf(response);
  const summary = new Map((answer.sites || []).map((site) => [site.host, site]));
  sites = (answer.tenants || []).map((host) => summary.get(host) || { host });
  renderSites();
}

function renderSites() {
  const wanted = $("search").value.trim().toLowerCase();
  const shown = sites.filter((site) => site.host.includes(wanted));
  const number = (n) => (n === undefined || n === null ? "–" : String(Math.round(n * 100) / 100));
  $("site-rows").replaceChildren(...shown.map((site) => el("tr", {},
    el("th", { scope: "row" }, el("a", { href: "#", textContent: site.host, dataset: { host: site.host },
      onclick: (event) => { event.preventDefault(); sitesHooks.open(site.host); } })),
    el("td", {}, number(site.rps)),
    el("td", {}, number(site.requests)),
    el("td", { className: site.errors ? "error" : "" }, number(site.errors)),
    el("td", {}, number(site.cpu_ms)),
    el("td", { className: site.quarantined_s ? "error" : "" },
      site.quarantined_s ? `quarantined (${Math.ceil(site.quarantined_s)} s left)` : "serving"))));
  $("sites-empty").textContent = sites.length
    ? (shown.length ? "" : `No site matches "${wanted}".`)
    : "No sites yet: make one with New site, or deploy one with sngin deploy.";
  $("sites-empty").hidden = shown.length > 0;
}

$("search").addEventListener("input", renderSites);

export async function newSite() {
  const answer = await ask({
    title: "New site", ok: "Create",
    text: "Its DNS name, pointed at sngin. It starts with index.lua, from a template.",
    fields: [{ name: "host", label: "Host name (e.g. api.example.com)" }],
    check: async ({ host }) => {
      const name = host.trim().toLowerCase();
      if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(name) || name.length > 253) {
        return "not a host name: letters, digits and hyphens, in labels separated by dots";
      }
      return sites.some((site) => site.host === name) ? `${name} exists` : null;
    },
  });
  if (!answer) return;
  const host = answer.host.trim().toLowerCase();
  const response = await api("PUT", `/__sngin/code/${host}/file?path=index.lua`,
    { body: TEMPLATE.replace("HOST", host), headers: { "If-None-Match": "*" } });
  if (response.status !== 201) return status(`not created: ${(await answerOf(response)).error}`, true);
  await sitesHooks.open(host);
  await sitesHooks.openFile("index.lua");
  status(`created ${host}`);
}

export function canMakeSites() { return !state.host; }
