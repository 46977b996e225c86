// Small DOM helpers shared by the pages. No framework: the console is a few forms and tables.

import { getLang, t } from "./i18n.js";

/** h("button", {class: "primary", i18n: "key", on: {click}}, ...children) -> Element.
 *  `i18n` sets the text from a string key (and data-i18n, so a language switch can redo it);
 *  `text` sets literal text; other attributes are set as given (false/null: left out). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === "i18n") {
      node.dataset.i18n = value;
      node.textContent = t(value);
    } else if (name === "text") {
      node.textContent = value;
    } else if (name === "class") {
      node.className = value;
    } else if (name in node && typeof value !== "string") {
      node[name] = value; // properties: checked, disabled, value as numbers...
    } else {
      node.setAttribute(name, value === true ? "" : value);
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let ids = 0;

/** A labelled form control: <div class="field"><label for=id>text</label>control hint</div>. */
export function field(labelKey, control, hintKey = null) {
  if (!control.id) control.id = `f${++ids}`;
  const children = [h("label", { for: control.id, i18n: labelKey }), control];
  if (hintKey) {
    const hint = h("small", { id: `${control.id}-hint`, class: "hint", i18n: hintKey });
    control.setAttribute("aria-describedby", hint.id);
    children.push(hint);
  }
  return h("div", { class: "field" }, ...children);
}

/** A <select> of [value, label] pairs (label: literal text). */
export function select(options, value = null, attrs = {}) {
  const node = h("select", attrs, ...options.map(([v, label]) => h("option", { value: v, text: label })));
  if (value !== null) node.value = value;
  return node;
}

/** Money from integer micro-units, in the page's language. */
export function money(micros, currency = "USD") {
  const amount = Number(micros) / 1e6;
  try {
    return new Intl.NumberFormat(getLang() === "zh" ? "zh-CN" : "en-US", {
      style: "currency", currency, minimumFractionDigits: 2, maximumFractionDigits: 6,
    }).format(amount);
  } catch { // a currency code Intl does not know
    return `${amount.toFixed(6).replace(/0{1,4}$/, "")} ${currency}`;
  }
}

export function dateTime(value) {
  if (!value) return "";
  const when = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return when.toLocaleString(getLang() === "zh" ? "zh-CN" : "en-US");
}

/** A passing note for screen readers and eyes (role=status region). */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const note = h("div", { class: `toast ${kind}`, text: message });
  box.append(note);
  setTimeout(() => note.remove(), 6000);
}

/** An error box (role=alert) that says what went wrong in words. */
export function alertBox(message) {
  return h("div", { class: "alert", role: "alert", text: message });
}

/** A table inside a scroll box (narrow screens scroll the table, not the page).
 *  columns: [[i18nKey, row => text|Node]]. */
export function table(columns, rows, { captionKey = null, empty = "common.empty" } = {}) {
  const head = h("tr", {}, ...columns.map(([key]) => h("th", { scope: "col", i18n: key })));
  const body = rows.length
    ? rows.map((row) => h("tr", {}, ...columns.map(([, cell]) => h("td", {}, cell(row) ?? ""))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "muted", i18n: empty }))];
  return h("div", { class: "table-scroll", tabindex: "0", role: "region",
    "aria-label": captionKey ? t(captionKey) : null },
  h("table", {}, captionKey ? h("caption", { i18n: captionKey }) : null,
    h("thead", {}, head), h("tbody", {}, ...body)));
}

/** Put text on the clipboard; says so in a toast. */
export async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast(t("common.copied"));
  } catch {
    toast(t("common.copy_failed"), "error");
  }
}

/** Offer `blob` as a file download. */
export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
