// The admin console (admin keys): a tab list of sections, each its own module under js/admin/
// loaded when first opened (#/admin/accounts, #/admin/keys, ...).

import { loadStrings, t } from "../i18n.js";
import { h } from "../ui.js";

const SECTIONS = ["accounts", "keys", "usage", "models", "status"];

export async function render(root, ctx) {
  await loadStrings("usage");
  const section = SECTIONS.includes(ctx.rest[0]) ? ctx.rest[0] : "accounts";
  root.append(
    h("h1", { i18n: "nav.admin" }),
    h("nav", { class: "tabs", "aria-label": t("admin.sections") },
      ...SECTIONS.map((name) => h("a", { href: `#/admin/${name}`, i18n: `admin.tab_${name}`,
        "aria-current": name === section ? "page" : null }))));
  const body = h("div", { class: "admin-section" });
  root.append(body);
  document.title = `${t(`admin.tab_${section}`)} · ${t("nav.admin")} · imagegate`;
  const module = await import(`../admin/${section}.js`);
  return module.render(body, ctx);
}
