// The site's last ten minutes (60 points of 10 s, every 10 s): the window's totals, and a chart
// per measure with a time axis, its peak, and the value under the pointer.
import { $, el } from "./core.js";
import { api } from "./core.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 300, TOP = 6, BOTTOM = 50, H = 64;
const MEASURES = [
  { name: "rps", label: "requests/s", summary: (v) => `peak ${round(Math.max(0, ...v))}` },
  { name: "errors", label: "5xx per 10 s", summary: (v) => `${sum(v)} in all` },
  { name: "cpu_ms", label: "CPU ms per 10 s", summary: (v) => `${round(sum(v))} in all` },
  { name: "p50_ms", label: "p50 ms", summary: (v) => `worst ${round(Math.max(0, ...v))}` },
  { name: "p99_ms", label: "p99 ms", summary: (v) => `worst ${round(Math.max(0, ...v))}` },
];
let timer = null;

const sum = (values) => values.reduce((a, b) => a + b, 0);
const round = (n) => Math.round(n * 100) / 100;
const clock = (t) => new Date(t * 1000).toISOString().slice(11, 19);

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

export function chart(tenant, current) {
  stopCharts();
  $("charts").replaceChildren();
  const sample = async () => {
    const response = await api("GET", `/__sngin/code/${tenant}/series`);
    if (response.status !== 200 || current() !== tenant) return;
    draw((await response.json()).points);
  };
  sample();
  timer = setInterval(sample, 10000);
}

export function stopCharts() {
  if (timer) clearInterval(timer);
  timer = null;
}

export function draw(points) {
  const requests = Math.round(sum(points.map((p) => (p.rps ?? 0) * 10)));
  const errors = sum(points.map((p) => p.errors ?? 0));
  const cpu = round(sum(points.map((p) => p.cpu_ms ?? 0)));
  $("totals").textContent = `${requests} requests, ${errors} 5xx, ${cpu} ms CPU`;
  $("charts").replaceChildren(...MEASURES.map((measure) => figure(measure, points)));
}

function figure(measure, points) {
  const values = points.map((p) => p[measure.name] ?? 0);
  const top = Math.max(...values, measure.name === "rps" ? 0.1 : 1);
  const x = (i) => (i / Math.max(points.length - 1, 1)) * W;
  const y = (v) => BOTTOM - (v / top) * (BOTTOM - TOP);
  const readout = el("span", { className: "readout" });
  const caption = el("figcaption", { className: "label", dataset: { chart: measure.name } },
    `${measure.label} — ${measure.summary(values)}`, readout);
  const label = `${measure.label} over the last ten minutes: ${measure.summary(values)}`;
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  plot.append(
    svg("line", { x1: 0, x2: W, y1: BOTTOM, y2: BOTTOM, class: "axis" }),
    svg("text", { x: 2, y: TOP + 6, class: "tick" }, String(round(top))),
    svg("polyline", { class: "series", points: values.map((v, i) => `${x(i)},${y(v)}`).join(" ") || `0,${BOTTOM} ${W},${BOTTOM}` }),
  );
  if (points.length) {
    for (const [i, anchor] of [[0, "start"], [Math.floor((points.length - 1) / 2), "middle"], [points.length - 1, "end"]]) {
      plot.append(svg("line", { x1: x(i), x2: x(i), y1: BOTTOM, y2: BOTTOM + 3, class: "axis" }),
                  svg("text", { x: x(i), y: H - 2, "text-anchor": anchor, class: "tick" }, clock(points[i].time)));
    }
  }
  const cursor = svg("line", { y1: TOP, y2: BOTTOM, class: "cursor", visibility: "hidden" });
  plot.append(cursor);
  const show = (i) => {
    if (i === null) {
      cursor.setAttribute("visibility", "hidden");
      readout.textContent = "";
      return;
    }
    cursor.setAttribute("x1", x(i));
    cursor.setAttribute("x2", x(i));
    cursor.setAttribute("visibility", "visible");
    const value = points[i][measure.name];
    readout.textContent = ` · ${clock(points[i].time)}: ${value === null || value === undefined ? "–" : round(value)}`;
  };
  plot.addEventListener("mousemove", (event) => {
    const box = plot.getBoundingClientRect();
    const at = (event.clientX - box.left) / box.width;
    show(Math.min(points.length - 1, Math.max(0, Math.round(at * (points.length - 1)))));
  });
  plot.addEventListener("mouseleave", () => show(null));
  return el("figure", {}, caption, plot);
}
