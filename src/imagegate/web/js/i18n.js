// Strings in English and Chinese. Each page keeps its own file under /console/i18n/
// ({"key": {"en": "...", "zh": "..."}}); a test checks that every key has both languages and
// that every key the code uses exists.

const strings = {};
const loaded = new Set();
let lang = "en";

export const LANGUAGES = ["en", "zh"];

/** Load the string files named (e.g. "shell", "playground"); each is fetched once. */
export async function loadStrings(...names) {
  await Promise.all(names.filter((n) => !loaded.has(n)).map(async (name) => {
    const response = await fetch(`/console/i18n/${name}.json`);
    if (!response.ok) throw new Error(`strings ${name}: ${response.status}`);
    Object.assign(strings, await response.json());
    loaded.add(name);
  }));
}

export function preferredLang() {
  const saved = localStorage.getItem("imagegate.lang");
  if (LANGUAGES.includes(saved)) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

export function setLang(next) {
  lang = LANGUAGES.includes(next) ? next : "en";
  localStorage.setItem("imagegate.lang", lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
}

export function getLang() {
  return lang;
}

/** The string for `key` in the current language, with {name} replaced from `vars`. */
export function t(key, vars = {}) {
  const entry = strings[key];
  const text = entry ? (entry[lang] ?? entry.en) : key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

const ATTRIBUTES = ["aria-label", "placeholder", "title"];

/** Translate the static markup under `root`: data-i18n sets the text, data-i18n-aria-label
 *  (and -placeholder, -title) the attribute. */
export function applyStrings(root = document) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const attribute of ATTRIBUTES) {
    for (const node of root.querySelectorAll(`[data-i18n-${attribute}]`)) {
      node.setAttribute(attribute, t(node.getAttribute(`data-i18n-${attribute}`)));
    }
  }
}
