// The site's live log (server-sent events), the last 200 lines.
import { $ } from "./core.js";

let source = null;

export function follow(tenant) {
  stopFollowing();
  $("tail").textContent = "";
  source = new EventSource(`/__sngin/logs?host=${encodeURIComponent(tenant)}`);
  source.onmessage = (event) => {
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

export function stopFollowing() {
  if (source) source.close();
  source = null;
}
