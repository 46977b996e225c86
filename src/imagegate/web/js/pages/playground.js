// The playground page (being built).
import { h } from "../ui.js";

export async function render(root) {
  root.append(h("h1", { i18n: "nav.playground" }));
}
