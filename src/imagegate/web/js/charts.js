// Bar charts as inline SVG, drawn from numbers the page already has: no library, no canvas.
// A screen reader meets each chart as one image (role="img") whose label sums it up, and the
// numbers themselves are in a table under a disclosure; each bar also has a <title> (a tooltip).

import { t } from "./i18n.js";
import { h, table } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clip(text, chars) {
  return text.length > chars ? `${text.slice(0, chars - 1)}…` : text;
}

/** One sentence for the chart's label: what it shows, how many bars, total and highest. */
function summary(title, items, format) {
  if (!items.length) return t("chart.summary_empty", { title });
  const total = items.reduce((sum, item) => sum + item.value, 0);
  const top = items.reduce((best, item) => (item.value > best.value ? item : best), items[0]);
  return t("chart.summary", { title, count: items.length, total: format(total),
    top: top.label, top_value: format(top.value) });
}

/** The numbers as a table, folded away under a <details> for anyone who wants them. */
function numbers(items, format, labelKey, valueKey) {
  return h("details", { class: "chart-numbers" },
    h("summary", { i18n: "chart.show_numbers" }),
    table([[labelKey, (item) => item.label], [valueKey, (item) => format(item.value)]], items));
}

function figure(title, items, format, drawing, labelKey, valueKey) {
  // No viewBox: x is in percent of the width and y in pixels, so the text keeps its size on
  // a phone and on a wide screen alike, and the bars stretch.
  const image = svg("svg", { width: "100%", height: drawing.height, role: "img",
    "aria-label": summary(title, items, format) }, ...drawing.nodes);
  image.style.height = `${drawing.height}px`;
  return h("figure", { class: "chart" }, h("figcaption", { text: title }),
    items.length ? image : h("p", { class: "muted", i18n: "chart.empty" }),
    items.length ? numbers(items, format, labelKey, valueKey) : null);
}

const pct = (value) => `${value.toFixed(3)}%`;

/** Vertical bars in the order given (days): items [{label, value}]; `format` writes a value.
 *  `labelKey`/`valueKey` head the table of numbers. */
export function columnChart({ title, items, format, labelKey = "chart.day", valueKey = "chart.value" }) {
  const height = 200;
  const top = 22;
  const bottom = 24;
  const plot = height - top - bottom;
  const max = Math.max(0, ...items.map((item) => item.value));
  const band = 100 / Math.max(1, items.length);
  const every = Math.ceil(items.length / 6); // at most 6 labels under the axis: they fit 320 px
  const nodes = [
    svg("line", { class: "axis", x1: "0%", x2: "100%", y1: top + plot, y2: top + plot }),
    svg("text", { x: 2, y: 14 }, t("chart.max", { value: format(max) })),
  ];
  items.forEach((item, i) => {
    const barHeight = max > 0 ? Math.max(item.value > 0 ? 1 : 0, (item.value / max) * plot) : 0;
    nodes.push(svg("g", {},
      svg("title", {}, `${item.label}: ${format(item.value)}`),
      svg("rect", { class: "bar", x: pct((i + 0.1) * band), width: pct(band * 0.8),
        y: top + plot - barHeight, height: barHeight }),
      // An invisible full-height band, so the tooltip is easy to hover even over a tiny bar.
      svg("rect", { class: "hit", x: pct(i * band), width: pct(band), y: top, height: plot })));
    if (i % every === 0) {
      const first = i === 0; // starts at the left edge rather than centred past it
      nodes.push(svg("text", { x: first ? "0%" : pct((i + 0.5) * band), y: height - 6,
        "text-anchor": first ? "start" : "middle" },
        item.label.length === 10 ? item.label.slice(5) : clip(item.label, 10)));
    }
  });
  return figure(title, items, format, { height, nodes }, labelKey, valueKey);
}

/** Horizontal bars, one row per item (models, accounts), in the order given: the name on the
 *  left, the bar, the amount right-aligned. */
export function barChart({ title, items, format, labelKey = "chart.name", valueKey = "chart.value" }) {
  const row = 28;
  const labels = 34; // percent of the width for the names
  const span = 42; // for the longest bar
  const height = Math.max(1, items.length) * row + 4;
  const max = Math.max(0, ...items.map((item) => item.value));
  const nodes = items.map((item, i) => {
    const y = i * row + 2;
    const width = max > 0 ? (item.value / max) * span : 0;
    return svg("g", {},
      svg("title", {}, `${item.label}: ${format(item.value)}`),
      svg("text", { x: pct(labels - 1), y: y + row / 2 + 5, "text-anchor": "end" }, clip(item.label, 16)),
      svg("rect", { class: "bar", x: pct(labels), y: y + 4, height: row - 8,
        width: item.value > 0 ? pct(Math.max(0.4, width)) : 0 }),
      svg("text", { x: "100%", y: y + row / 2 + 5, "text-anchor": "end" }, format(item.value)));
  });
  return figure(title, items, format, { height, nodes }, labelKey, valueKey);
}
