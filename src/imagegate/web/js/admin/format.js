// How the admin sections write facts and numbers: label/value lists, the server's field
// names in words, booleans and bytes as people read them.

import { t } from "../i18n.js";
import { h } from "../ui.js";

/** A field's label when the strings know it (admin.json `field.NAME`), else its API name. */
export function fieldName(name) {
  const key = `field.${name}`;
  const text = t(key);
  return text === key ? name : text;
}

/** A value as people read it: yes/no, megabytes, "—" for none, or as given. */
export function reading(name, value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? t("common.yes") : t("common.no");
  if (name === "memory_bytes") return `${(value / 2 ** 20).toFixed(1)} MB`;
  return String(value);
}

/** A <dl> of [label text, value (text or Node)], leaving out pairs without a value. */
export function facts(pairs) {
  return h("dl", { class: "facts" }, ...pairs
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .flatMap(([label, value]) => [h("dt", { text: label }), h("dd", {}, value)]));
}

/** A flat object's numbers as facts, in words, but the fields named in `skip`. */
export function numberFacts(block, skip = []) {
  return facts(Object.entries(block)
    .filter(([name, value]) => !skip.includes(name) && (typeof value !== "object" || value === null))
    .map(([name, value]) => [fieldName(name), reading(name, value)]));
}

/** "name: label value, label value" in words, one line per entry of `byName`. */
export function numberLines(byName) {
  return Object.entries(byName || {}).map(([name, numbers]) => h("div", { text: `${name}: ${
    Object.entries(numbers).filter(([, v]) => typeof v !== "object" || v === null)
      .map(([k, v]) => `${fieldName(k)} ${reading(k, v)}`).join(", ")}` }));
}
