// Usage as the account page and the admin usage explorer show it: filters, the summary's
// totals and charts, the rows, and the CSV export. Strings: i18n/usage.json.

import { apiText, errorMessage } from "./api.js";
import { barChart, columnChart } from "./charts.js";
import { t } from "./i18n.js";
import { alertBox, dateTime, download, field, h, money, select, table } from "./ui.js";

export const PERIODS = [7, 30, 90];

/** What `utc_offset_minutes` is for this browser now: days on the charts are its days. */
export function utcOffsetMinutes() {
  return -new Date().getTimezoneOffset();
}

/** "YYYY-MM-DD" of `when` in this browser's time zone. */
export function localDate(when) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())}`;
}

/** Local midnight `days` days before today (0: this morning). */
export function startOfDay(days = 0) {
  const when = new Date();
  when.setHours(0, 0, 0, 0);
  when.setDate(when.getDate() - days);
  return when;
}

/** A date input's "YYYY-MM-DD" as the instant of that local midnight, `plusDays` later. */
function midnight(text, plusDays = 0) {
  const [year, month, day] = text.split("-").map(Number);
  return new Date(year, month - 1, day + plusDays);
}

/** Every local day from `first` to `last` (Dates), each with the summary's numbers or zeros. */
function everyDay(byDay, first, last) {
  const known = new Map(byDay.map((day) => [day.date, day]));
  const days = [];
  for (const when = new Date(first); when <= last && days.length < 1000; when.setDate(when.getDate() + 1)) {
    const date = localDate(when);
    days.push(known.get(date) || { date, requests: 0, images: 0, cost_micros: 0 });
  }
  // Days outside the range the browser computed (a clock or zone change) are still shown.
  for (const day of byDay) if (!days.some((d) => d.date === day.date)) days.push(day);
  return days.sort((a, b) => a.date.localeCompare(b.date));
}

let stats = 0;

/** A number with its label, as a small card (a group named by its label). */
export function stat(labelKey, value, hintKey = null) {
  const id = `stat-${++stats}`;
  return h("div", { class: "card stat-card", role: "group", "aria-labelledby": id },
    h("div", { class: "muted", id, i18n: labelKey }),
    h("div", { class: "stat", text: value }),
    hintKey ? h("small", { class: "hint", i18n: hintKey }) : null);
}

/** Totals and charts of a usage summary. `first`/`last`: the days the period covers (Dates;
 *  default: the summary's own first and last day). */
export function summaryView(summary, { first = null, last = null } = {}) {
  const currency = summary.currency;
  const cost = (micros) => money(micros, currency);
  const dates = summary.by_day.map((d) => d.date);
  const from = first || (dates.length ? midnight(dates[0]) : null);
  const to = last || (dates.length ? midnight(dates[dates.length - 1]) : null);
  const days = from && to ? everyDay(summary.by_day, from, to) : [];
  const charts = [
    columnChart({ title: t("usage.chart_by_day"), format: cost,
      items: summary.by_day.length ? days.map((d) => ({ label: d.date, value: d.cost_micros })) : [] }),
    barChart({ title: t("usage.chart_by_model"), format: cost, labelKey: "usage.model",
      items: summary.by_model.map((m) => ({ label: m.model || "—", value: m.cost_micros })) }),
  ];
  if (summary.by_account) {
    charts.push(barChart({ title: t("usage.chart_by_account"), format: cost, labelKey: "usage.account",
      items: summary.by_account.map((a) => ({ label: a.account || `#${a.account_id}`, value: a.cost_micros })) }));
  }
  const total = summary.total;
  return h("div", { class: "usage-summary" },
    h("div", { class: "stats" },
      stat("usage.total_cost", cost(total.cost_micros)),
      stat("usage.total_requests", String(total.requests)),
      stat("usage.total_images", String(total.images)),
      stat("usage.total_failed", String(total.failed))),
    h("div", { class: "charts" }, ...charts));
}

/** The filter controls: model and status always, a date range, and `extra` fields first.
 *  Returns {node, values()} where values() gives the API's query fields. */
export function usageFilters({ models = [], extra = [], from = "", to = "" } = {}) {
  const model = select([["", t("common.all")], ...models.map((m) => [m, m])], "", { name: "model" });
  const status = select([["", t("common.all")], ["succeeded", t("usage.succeeded")],
    ["failed", t("usage.failed")]], "", { name: "status" });
  const since = h("input", { type: "date", name: "since", value: from });
  const until = h("input", { type: "date", name: "until", value: to });
  const node = h("div", { class: "row filters" },
    ...extra.map(([labelKey, control]) => field(labelKey, control)),
    field("usage.model", model), field("usage.status", status),
    field("usage.from", since), field("usage.to", until));
  const values = () => ({
    ...Object.fromEntries(extra.map(([, control]) => [control.name, control.value])),
    model: model.value, status: status.value,
    since: since.value ? midnight(since.value).toISOString() : "",
    until: until.value ? midnight(until.value, 1).toISOString() : "", // "to" is inclusive
  });
  return { node, values, range: () => ({
    first: since.value ? midnight(since.value) : null,
    last: until.value ? midnight(until.value) : null,
  }) };
}

function statusBadge(row) {
  const ok = row.status < 400;
  return h("span", { class: `badge ${ok ? "ok" : "off"}` },
    ok ? String(row.status) : `${row.status}${row.error_code ? ` ${row.error_code}` : ""}`);
}

/** The rows, newest first. `accountName(id)` adds an account column; `keyName(id)` names keys. */
export function usageTable(rows, { currency, accountName = null, keyName = (id) => (id ? `#${id}` : "") }) {
  const columns = [["usage.time", (r) => dateTime(r.created_at)]];
  if (accountName) columns.push(["usage.account", (r) => accountName(r.account_id)]);
  columns.push(
    ["usage.key", (r) => keyName(r.key_id)],
    ["usage.model", (r) => r.model],
    ["usage.endpoint", (r) => r.endpoint],
    ["usage.size", (r) => r.size],
    ["usage.quality", (r) => r.quality],
    ["usage.n", (r) => r.n],
    ["usage.images", (r) => r.images_delivered],
    ["usage.cost", (r) => money(r.cost_micros, currency)],
    ["usage.status", statusBadge],
    ["usage.latency", (r) => (r.latency_ms === null || r.latency_ms === undefined ? "" : `${r.latency_ms} ms`)],
    ["usage.request_id", (r) => h("code", { text: r.request_id || "" })]);
  return table(columns, [...rows].reverse(), { captionKey: "usage.rows", empty: "usage.no_rows" });
}

/** Fetch the CSV with the key (never a link carrying it) and offer it as a file. */
export async function downloadCsv(path, query) {
  const text = await apiText(path, { query: { ...query, format: "csv" } });
  download(new Blob([text], { type: "text/csv" }), "imagegate-usage.csv");
}

/** The filters as a form: "Apply" calls `load()`, "Export CSV" downloads `csvPath` with the
 *  same filters (and `csvLimit` rows at most); errors go into `problem`. */
export function filterForm(filters, { load, csvPath, csvLimit, problem, card = false }) {
  const exportButton = h("button", { type: "button", i18n: "usage.export_csv", on: { click: async () => {
    problem.replaceChildren();
    exportButton.disabled = true;
    try {
      await downloadCsv(csvPath, { ...filters.values(), limit: csvLimit });
    } catch (err) {
      problem.replaceChildren(alertBox(errorMessage(err)));
    } finally {
      exportButton.disabled = false;
    }
  } } });
  return h("form", { class: `usage-filters${card ? " card" : ""}`, "aria-label": t("usage.filters"),
    on: { submit: (event) => {
      event.preventDefault();
      load();
    } } },
  filters.node, h("div", { class: "actions" },
    h("button", { type: "submit", class: "primary", i18n: "usage.apply" }), exportButton));
}
