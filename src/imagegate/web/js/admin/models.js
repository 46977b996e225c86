// Admin: every catalog model, disabled ones too: whether it is enabled and available, its
// price, its weights, its engine's queue and batch numbers, and its upstream deployments with
// their cool-down.

import { api, errorMessage } from "../api.js";
import { t } from "../i18n.js";
import { alertBox, h, money, table } from "../ui.js";
import { facts, numberFacts } from "./format.js";

function badge(on, onKey, offKey) {
  return h("span", { class: `badge ${on ? "ok" : "off"}`, i18n: on ? onKey : offKey });
}

function price(pricing, currency) {
  const each = (text) => money(Math.round(Number(text) * 1e6), currency);
  const table = Object.entries(pricing.table || {});
  const free = Number(pricing.per_image) === 0 && table.every(([, value]) => Number(value) === 0);
  if (free) return t("models.free");
  const parts = [];
  if (Number(pricing.per_image) > 0) parts.push(t("models.per_image", { price: each(pricing.per_image) }));
  if (table.length) {
    parts.push(h("details", {}, h("summary", { text: t("models.price_table", { count: table.length }) }),
      h("ul", { class: "plain" }, ...table.map(([size, value]) => h("li", { text: `${size}: ${each(value)}` })))));
  }
  return h("div", {}, ...parts.map((part) => (typeof part === "string" ? h("div", { text: part }) : part)));
}

/** The engine's (or the relay's) numbers, but what the model's facts above already say. */
function numbers(block, shown = []) {
  return block ? numberFacts(block, shown) : null;
}

function deployments(list) {
  if (!list || !list.length) return null;
  return table([
    ["models.deployment", (d) => d.name],
    ["models.format", (d) => d.format || d.provider || ""],
    ["models.weight", (d) => d.weight ?? ""],
    ["models.priority", (d) => d.priority ?? ""],
    ["models.state", (d) => (d.cooling_down
      ? h("span", { class: "badge warn", text: t("models.cooling_down", { seconds: Math.ceil(d.cooling_down_seconds) }) })
      : h("span", { class: "badge ok", i18n: "models.ready" }))],
  ], list, { captionKey: "models.deployments" });
}

function card(model, currency) {
  const id = `model-${model.id.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  return h("section", { class: "card model-card", "aria-labelledby": id },
    h("h2", { id, text: model.id }),
    h("div", { class: "badges" },
      badge(model.enabled, "models.enabled", "models.disabled"),
      badge(model.available, "models.available", "models.unavailable")),
    model.description ? h("p", { class: "muted", text: model.description }) : null,
    facts([
      [t("models.backend"), model.backend],
      [t("models.price"), price(model.pricing || {}, currency)],
      [t("models.weights"), model.weights ?? null],
      [t("models.loaded"), model.loaded === undefined ? null : (model.loaded ? t("common.yes") : t("common.no"))],
      [t("models.source"), model.source ? h("code", { text: String(model.source) }) : null],
      [t("models.state_local"), model.state ?? null],
      [t("models.error"), model.error ?? null],
    ]),
    model.engine ? h("h3", { i18n: "models.engine" }) : null,
    numbers(model.engine, model.loaded === undefined ? [] : ["loaded"]),
    model.in_flight ? h("h3", { i18n: "models.relay" }) : null,
    numbers(model.in_flight),
    deployments(model.deployments));
}

export async function render(root, ctx) {
  const out = h("div", { "aria-live": "polite" });
  const refresh = h("button", { type: "button", i18n: "common.refresh", on: { click: () => load() } });
  root.append(h("div", { class: "actions" }, refresh), out);
  async function load() {
    refresh.disabled = true;
    try {
      const { data } = await api("/admin/models");
      const currency = ctx.me.account.currency;
      out.replaceChildren(data.length ? h("div", { class: "grid" }, ...data.map((m) => card(m, currency)))
        : h("p", { class: "muted", i18n: "common.empty" }));
    } catch (err) {
      out.replaceChildren(alertBox(errorMessage(err)));
    } finally {
      refresh.disabled = false;
    }
  }
  await load();
}
