// What every part of the page shares: the element lookup, the session's state, the admin API
// (with the CSRF token on every change), toasts, and the one list renderer.

export const $ = (id) => document.getElementById(id);

export const state = {
  csrf: null, host: null, public: null, tenant: null, path: null, etag: null, dirty: false,
  onLoggedOut: () => {},
};

export async function api(method, path, { json, body, headers = {} } = {}) {
  const options = { method, headers: { ...headers }, credentials: "same-origin" };
  if (method !== "GET" && state.csrf) options.headers["X-CSRF-Token"] = state.csrf;
  if (json !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  } else if (body !== undefined) {
    options.body = body;
  }
  const response = await fetch(path, options);
  if (response.status === 401 && !path.startsWith("/__sngin/ui/")) state.onLoggedOut();
  return response;
}

// The server's JSON answer, or its status line when the body is not JSON.
export async function answerOf(response) {
  try {
    return await response.json();
  } catch (error) {
    return { error: `${response.status} ${response.statusText}` };
  }
}

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// Every outcome gets a toast (announced by screen readers); the toolbar keeps the last one.
export function toast(text, error = false) {
  const note = el("div", { className: error ? "toast error" : "toast", role: error ? "alert" : "status" }, text);
  $("toasts").append(note);
  while ($("toasts").children.length > 3) $("toasts").firstChild.remove();  // the newest three
  setTimeout(() => note.remove(), 6000);
}

export function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  if (text && !text.endsWith("…")) toast(text, error);
}

// The one list of links (sites, files, storage keys): each entry a link, plus its extras.
export function linkList(list, entries, { label, pick, isOpen = () => false, data = () => ({}),
                                          extras = () => [] }) {
  list.replaceChildren(...entries.map((entry) => el("li", {},
    el("a", {
      href: "#", textContent: label(entry), className: isOpen(entry) ? "open" : "",
      dataset: data(entry), onclick: (event) => { event.preventDefault(); pick(entry); },
    }),
    ...extras(entry))));
}

export function item(text, className = "") {
  return el("li", { className }, text);
}

export function nonce() {
  return document.querySelector("meta[name=sngin-csp-nonce]").content;
}
