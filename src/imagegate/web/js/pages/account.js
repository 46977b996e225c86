// The account page, for any key: the account's money, the key's own limits, spending charts
// over a period, and the usage rows with filters and a CSV export.

import { api, errorMessage } from "../api.js";
import { loadStrings, t } from "../i18n.js";
import { alertBox, dateTime, field, h, money, select } from "../ui.js";
import {
  PERIODS, filterForm, startOfDay, stat, summaryView, usageFilters, usageTable, utcOffsetMinutes,
} from "../usage.js";

const ROWS = 500; // rows shown; the CSV carries up to the API's maximum
const CSV_ROWS = 10_000;

function moneyCard(account) {
  const cost = (micros) => money(micros, account.currency);
  return h("section", { "aria-labelledby": "account-money" },
    h("h2", { id: "account-money", text: t("account.money", { name: account.name }) }),
    h("div", { class: "stats" },
      stat("account.balance", cost(account.balance_micros),
        account.unlimited ? "account.unlimited_hint" : null),
      stat("account.held", cost(account.held_micros), "account.held_hint"),
      stat("account.spent", cost(account.spent_micros))),
    account.price_multiplier !== "1"
      ? h("p", { class: "muted", text: t("account.multiplier", { value: account.price_multiplier }) })
      : null);
}

function facts(pairs) {
  return h("dl", { class: "facts" }, ...pairs.flatMap(([key, value]) => [
    h("dt", { i18n: key }), h("dd", {}, value)]));
}

function keyCard(key) {
  if (!key) return h("p", { class: "muted", i18n: "account.no_key" });
  const unlimited = t("account.no_limit");
  return h("section", { class: "card", "aria-labelledby": "account-key" },
    h("h2", { id: "account-key", i18n: "account.key_title" }),
    facts([
      ["account.key_name", key.name],
      ["account.key_prefix", h("code", { text: `${key.prefix}…` })],
      ["account.key_admin", key.is_admin ? t("common.yes") : t("common.no")],
      ["account.key_expires", key.expires_at ? dateTime(key.expires_at) : t("account.never")],
      ["account.key_models", key.allowed_models ? key.allowed_models.join(", ") || t("common.none") : t("account.all_models")],
      ["account.key_ips", key.allowed_ips ? key.allowed_ips.join(", ") || t("common.none") : t("account.any_ip")],
      ["account.key_rpm", key.rpm_limit ?? unlimited],
      ["account.key_concurrency", key.concurrency_limit ?? unlimited],
      ["account.key_multiplier", key.price_multiplier ?? "1"],
    ]));
}

/** Spending over the last 7/30/90 days, as charts; the period select redraws them. */
function spending(currency) {
  const period = select(PERIODS.map((days) => [String(days), t("account.period_days", { days })]), "30",
    { name: "period" });
  const out = h("div", { "aria-live": "polite" });
  const section = h("section", { class: "card", "aria-labelledby": "account-spending" },
    h("div", { class: "section-head" },
      h("h2", { id: "account-spending", i18n: "account.spending" }),
      field("account.period", period)),
    out);
  async function load() {
    const days = Number(period.value);
    const first = startOfDay(days - 1);
    try {
      const summary = await api("/v1/account/usage/summary", {
        query: { since: first.toISOString(), utc_offset_minutes: utcOffsetMinutes() } });
      out.replaceChildren(summaryView({ ...summary, currency: summary.currency || currency },
        { first, last: startOfDay(0) }));
    } catch (err) {
      out.replaceChildren(alertBox(errorMessage(err)));
    }
  }
  period.addEventListener("change", load);
  return { section, load };
}

/** The usage rows, filtered, with the CSV of the same filters. */
function usageRows(currency, models) {
  const filters = usageFilters({ models });
  const out = h("div", { "aria-live": "polite" });
  const problem = h("div");
  async function load() {
    problem.replaceChildren();
    try {
      const body = await api("/v1/account/usage", { query: { ...filters.values(), limit: ROWS } });
      out.replaceChildren(usageTable(body.data, { currency }),
        h("p", { class: "muted", text: t("usage.rows_shown", { count: body.data.length, limit: ROWS }) }));
    } catch (err) {
      problem.replaceChildren(alertBox(errorMessage(err)));
    }
  }
  const form = filterForm(filters, { load, csvPath: "/v1/account/usage", csvLimit: CSV_ROWS, problem });
  const section = h("section", { class: "card", "aria-labelledby": "account-usage" },
    h("h2", { id: "account-usage", i18n: "account.usage" }), form, problem, out);
  return { section, load };
}

export async function render(root, ctx) {
  await loadStrings("usage");
  root.append(h("h1", { i18n: "nav.account" }));
  let me = ctx.me;
  let models = [];
  try {
    [me, models] = await Promise.all([ctx.refreshMe(), api("/v1/models").then((body) => body.data.map((m) => m.id))]);
  } catch (err) {
    root.append(alertBox(errorMessage(err)));
  }
  const { account, key } = me;
  const charts = spending(account.currency);
  const rows = usageRows(account.currency, models);
  root.append(moneyCard(account), keyCard(key), charts.section, rows.section);
  await Promise.all([charts.load(), rows.load()]);
}
