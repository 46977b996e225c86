// Modal forms for the admin console: a native <dialog> (focus stays inside, Escape closes,
// focus returns to the button that opened it), its errors shown inside it.

import { errorMessage } from "../api.js";
import { t } from "../i18n.js";
import { alertBox, h } from "../ui.js";

/** The words for an admin error: the last-admin-key refusal gets its own sentence. */
export function adminError(err) {
  if (err && err.status === 409 && err.code === "last_admin_key") return t("admin.last_admin_key");
  return errorMessage(err);
}

let opened = 0;

/** Open a modal form: `title` (text), `body` (nodes), a submit button labelled `submitKey`.
 *  `onSubmit()` runs on submit; when it resolves the dialog closes, when it throws its error
 *  is shown and the dialog stays. Resolves true once done, false when cancelled. */
export function formDialog(parent, { title, body = [], submitKey = "common.save", danger = false,
  onSubmit }) {
  return new Promise((resolve) => {
    let done = false;
    const problem = h("div");
    const submit = h("button", { type: "submit", class: danger ? "danger" : "primary", i18n: submitKey });
    const heading = h("h2", { id: `dialog-${++opened}`, text: title });
    const dialog = h("dialog", { class: "admin-dialog", "aria-labelledby": heading.id });
    const form = h("form", { on: { submit: async (event) => {
      event.preventDefault();
      problem.replaceChildren();
      submit.disabled = true;
      try {
        await onSubmit();
        done = true;
        dialog.close();
      } catch (err) {
        problem.replaceChildren(alertBox(adminError(err)));
      } finally {
        submit.disabled = false;
      }
    } } }, heading, ...body, problem, h("div", { class: "actions" }, submit,
      h("button", { type: "button", i18n: "common.cancel", on: { click: () => dialog.close() } })));
    dialog.append(form);
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(done);
    });
    parent.append(dialog);
    dialog.showModal();
  });
}

/** Ask before something that cannot be undone. */
export function confirmDialog(parent, { title, message, submitKey, onSubmit }) {
  return formDialog(parent, { title, body: [h("p", { text: message })], submitKey, danger: true, onSubmit });
}
