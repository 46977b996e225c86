// The "use it from code" card: the playground's current request as curl, Python and Node,
// each with a copy button. Rebuilt whenever the form changes.

import { copy, h } from "../ui.js";
import { curlSnippet, nodeSnippet, pythonSnippet } from "./snippets.js";

const LANGUAGES = [
  // [name, heading (a product name, the same in every language), button, writer]
  ["curl", "curl", "play.copy_curl", curlSnippet],
  ["python", "Python", "play.copy_python", pythonSnippet],
  ["node", "Node.js", "play.copy_node", nodeSnippet],
];

export function codeCard(request, base) {
  const blocks = LANGUAGES.map(([name, , , write]) => ({
    write, pre: h("pre", { class: `snippet snippet-${name}`, tabindex: "0" }, h("code")),
  }));
  const buttons = LANGUAGES.map(([, , label], i) => h("button", { type: "button", i18n: label,
    on: { click: () => copy(blocks[i].pre.textContent) } }));
  const card = h("section", { class: "card play-code", "aria-labelledby": "play-code-title" },
    h("h2", { id: "play-code-title", i18n: "play.code" }),
    h("p", { class: "hint", i18n: "play.code_hint" }),
    h("div", { class: "actions" }, ...buttons),
    h("details", {}, h("summary", { i18n: "play.code_show" }),
      ...LANGUAGES.flatMap(([, heading], i) => [h("h3", { text: heading }), blocks[i].pre])));
  return {
    card,
    update() {
      const current = request();
      for (const block of blocks) block.pre.firstChild.textContent = block.write(current, base);
    },
  };
}
