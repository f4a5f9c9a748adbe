// The code editor (CodeMirror: Lua highlighting, the check's errors in the gutter) and the
// merge views (history's diff, the conflict's hunks), all under the page's CSP nonce.
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { EditorState, Prec } from "@codemirror/state";
import { StreamLanguage } from "@codemirror/language";
import { lua } from "@codemirror/legacy-modes/mode/lua";
import { setDiagnostics, lintGutter } from "@codemirror/lint";
import { MergeView } from "@codemirror/merge";
import { $, nonce } from "./core.js";

let view = null;
let loading = false;

function common(label) {
  return [basicSetup, StreamLanguage.define(lua),
    EditorView.cspNonce.of(nonce()),  // the page's CSP allows the server's styles and this
    EditorView.contentAttributes.of({ "aria-label": label })];
}

export function createEditor({ save, run, changed }) {
  const keys = Prec.highest(keymap.of([
    { key: "Mod-s", preventDefault: true, run: () => { save(); return true; } },
    { key: "Mod-Enter", preventDefault: true, run: () => { run(); return true; } },
  ]));
  view = new EditorView({
    parent: $("editor"),
    state: EditorState.create({
      doc: "",
      extensions: [...common("code"), keys, lintGutter(),
        EditorView.updateListener.of((update) => {
          if (update.docChanged) changed(!loading);
        })],
    }),
  });
}

export function text() { return view.state.doc.toString(); }

// What the store holds: not an edit.
export function setText(content) {
  loading = true;
  view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: content } });
  loading = false;
  showErrors([]);  // another file's marks go; the check runs on this one
}

export function showErrors(errors) {
  const doc = view.state.doc;
  view.dispatch(setDiagnostics(view.state, errors.map((error) => {
    const line = doc.line(Math.min(Math.max(error.line || 1, 1), doc.lines));
    return { from: line.from, to: line.to, severity: "error", message: error.message };
  })));
  $("editor").dataset.errors = JSON.stringify(errors);
}

// Two versions side by side: `a` (left) read-only; `b` editable when `editable`, with a button
// on each changed hunk that takes a's side into b.
export function mergeView(parent, { a, b, labels, editable = false }) {
  parent.replaceChildren();
  const merge = new MergeView({
    parent,
    a: { doc: a, extensions: [...common(labels[0]), EditorState.readOnly.of(true)] },
    b: { doc: b, extensions: [...common(labels[1]), EditorState.readOnly.of(!editable)] },
    ...(editable ? { revertControls: "a-to-b", renderRevertControl: takeButton } : {}),
    collapseUnchanged: { margin: 3, minSize: 6 },
  });
  // Each side scrolls: reachable from the keyboard.
  for (const scroller of merge.dom.querySelectorAll(".cm-scroller")) scroller.tabIndex = 0;
  // The hunk buttons act on mousedown only: the keyboard gets Enter and Space too.
  merge.dom.addEventListener("keydown", (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target.closest(".cm-merge-revert")) {
      merge.revertClicked(event);
    }
  });
  return merge;
}

function takeButton() {
  const button = document.createElement("button");
  button.textContent = "\u21dd";
  button.setAttribute("aria-label", "take this hunk from the server's version");
  button.title = "take this hunk from the server's version";
  return button;
}
