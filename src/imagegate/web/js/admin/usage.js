// Admin: the usage explorer across accounts. One set of filters drives the summary (totals,
// charts by day, model and account) and the rows; the CSV has the same filters.

import { api, errorMessage } from "../api.js";
import { t } from "../i18n.js";
import { alertBox, h, select } from "../ui.js";
import {
  filterForm, localDate, startOfDay, summaryView, usageFilters, usageTable, utcOffsetMinutes,
} from "../usage.js";

const ROWS = 1000;
const CSV_ROWS = 100_000;

export async function render(root) {
  let accounts = [];
  let keys = [];
  let models = [];
  try {
    [accounts, keys, models] = await Promise.all([
      api("/admin/accounts").then((body) => body.data),
      api("/admin/keys").then((body) => body.data),
      api("/admin/models").then((body) => body.data.map((m) => m.id))]);
  } catch (err) {
    root.append(alertBox(errorMessage(err)));
    return;
  }
  const accountName = (id) => accounts.find((a) => a.id === id)?.name ?? (id ? `#${id}` : "");
  const keyName = (id) => {
    const key = keys.find((k) => k.id === id);
    return key ? `#${id} ${key.name}` : id ? `#${id}` : "";
  };
  const account = select([["", t("common.all")], ...accounts.map((a) => [String(a.id), a.name])], "",
    { name: "account" });
  const key = select([["", t("common.all")], ...keys.map((k) => [String(k.id),
    `#${k.id} ${k.name} (${accountName(k.account_id)})`])], "", { name: "key" });
  const filters = usageFilters({ models, extra: [["usage.account", account], ["usage.key", key]],
    from: localDate(startOfDay(29)) });
  const summaryOut = h("div", { "aria-live": "polite" });
  const rowsOut = h("div", { "aria-live": "polite" });
  const problem = h("div");

  async function load() {
    problem.replaceChildren();
    const query = filters.values();
    const currency = accounts.find((a) => String(a.id) === query.account)?.currency;
    try {
      const [summary, rows] = await Promise.all([
        api("/admin/usage/summary", { query: { ...query, utc_offset_minutes: utcOffsetMinutes() } }),
        api("/admin/usage", { query: { ...query, limit: ROWS } })]);
      const range = filters.range();
      summaryOut.replaceChildren(summaryView(summary, {
        first: range.first, last: range.last || (range.first ? startOfDay(0) : null) }));
      rowsOut.replaceChildren(usageTable(rows.data, { currency: currency || summary.currency, accountName, keyName }),
        h("p", { class: "muted", text: t("usage.rows_shown", { count: rows.data.length, limit: ROWS }) }));
    } catch (err) {
      problem.replaceChildren(alertBox(errorMessage(err)));
    }
  }
  root.append(
    filterForm(filters, { load, csvPath: "/admin/usage", csvLimit: CSV_ROWS, problem, card: true }),
    problem,
    h("section", { class: "card", "aria-labelledby": "usage-summary" },
      h("h2", { id: "usage-summary", i18n: "usage.summary" }), summaryOut),
    h("div", { class: "card" }, rowsOut)); // the table's caption names it
  await load();
}
