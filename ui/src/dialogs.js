// One accessible dialog for every question the page asks (a native <dialog>: modal, focus
// kept inside, Escape cancels); focus goes back where it was when it closes.
import { $, el } from "./core.js";

// fields: [{name, label, value, multiline}]; list: lines shown as a list (e.g. errors);
// check(values) answers an error to show (the dialog stays open) or nothing.
export function ask({ title, text = "", fields = [], list = [], ok = "OK", danger = false,
                      check = async () => null }) {
  const dialog = $("ask");
  const before = document.activeElement;
  $("ask-title").textContent = title;
  $("ask-text").textContent = text;
  $("ask-text").hidden = !text;
  $("ask-list").replaceChildren(...list.map((line) => el("li", {}, line)));
  $("ask-list").hidden = !list.length;
  $("ask-error").textContent = "";
  $("ask-ok").textContent = ok;
  $("ask-ok").className = danger ? "danger" : "primary";
  const inputs = fields.map((field) => {
    const input = el(field.multiline ? "textarea" : "input", {
      id: `ask-${field.name}`, name: field.name, value: field.value ?? "",
      autocomplete: "off", spellcheck: false,
    });
    if (field.multiline) input.rows = 6;
    return { field, input };
  });
  $("ask-fields").replaceChildren(...inputs.map(({ field, input }) =>
    el("label", { htmlFor: input.id }, field.label, input)));
  dialog.showModal();
  (inputs.length ? inputs[0].input : $("ask-cancel")).focus();
  return new Promise((resolve) => {
    const values = () => Object.fromEntries(inputs.map(({ field, input }) =>
      [field.name, input.value]));
    const submit = async (event) => {
      event.preventDefault();
      const problem = await check(values());
      if (problem) {
        $("ask-error").textContent = problem;
        return;
      }
      finish(values());
    };
    const cancel = () => finish(null);
    const finish = (answer) => {
      $("ask-form").removeEventListener("submit", submit);
      $("ask-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      dialog.close();
      if (before && before.focus) before.focus();
      resolve(answer);
    };
    $("ask-form").addEventListener("submit", submit);
    $("ask-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);  // Escape
  });
}
