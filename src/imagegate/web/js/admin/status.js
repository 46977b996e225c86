// Admin: the server's health: version, uptime, the database, storage, engine and limits
// backends, readiness, and every gateway replica's admission counts.

import { api, errorMessage } from "../api.js";
import { t } from "../i18n.js";
import { alertBox, dateTime, h, table } from "../ui.js";
import { numberLines } from "./format.js";

/** "3 d 4 h", "5 min 2 s": the two largest units that are not zero. */
function uptime(seconds) {
  const s = Math.floor(seconds);
  const parts = [["d", Math.floor(s / 86400)], ["h", Math.floor((s % 86400) / 3600)],
    ["min", Math.floor((s % 3600) / 60)], ["s", s % 60]];
  const first = Math.max(0, parts.findIndex(([, n]) => n > 0));
  return parts.slice(first, first + 2).map(([unit, n]) => t(`status.unit_${unit}`, { n })).join(" ");
}

function badge(ok, text) {
  return h("span", { class: `badge ${ok ? "ok" : "off"}`, text });
}

function facts(pairs) {
  return h("dl", { class: "facts" }, ...pairs.flatMap(([key, value]) => [h("dt", { i18n: key }), h("dd", {}, value)]));
}

function readiness(ready) {
  const status = ready?.status || "unknown";
  const label = { ready: "status.ready", loading: "status.loading", failed: "status.failed" }[status];
  const parts = [badge(status === "ready", label ? t(label) : status)];
  if (ready?.loading?.length) parts.push(" ", t("status.loading_models", { models: ready.loading.join(", ") }));
  for (const [model, why] of Object.entries(ready?.failed || {})) parts.push(h("div", { text: `${model}: ${why}` }));
  return h("span", {}, ...parts);
}

/** "model: waiting 1, running no" per model of a replica's engine or relay counts. */
function counts(byModel) {
  const lines = numberLines(byModel);
  return lines.length ? h("div", {}, ...lines) : "—";
}

function view(status) {
  return h("div", {},
    h("section", { class: "card", "aria-labelledby": "status-server" },
      h("h2", { id: "status-server", i18n: "status.server" }),
      facts([
        ["status.version", status.version],
        ["status.pid", String(status.pid)],
        ["status.node_id", status.node_id ? h("code", { text: status.node_id }) : "—"],
        ["status.started_at", dateTime(status.started_at)],
        ["status.uptime", uptime(status.uptime_seconds)],
        ["status.readiness", readiness(status.readiness)],
        ["status.database", h("span", {}, `${status.database.backend} `,
          badge(status.database.reachable, status.database.reachable ? t("status.reachable") : t("status.unreachable")))],
        ["status.storage", status.storage.backend],
        ["status.engine", status.engine.backend],
        ["status.limits", status.limits.backend],
      ])),
    h("div", { class: "card" }, table([ // the table's caption names it
      ["status.node", (r) => h("code", { text: r.node_id })],
      ["status.reported_at", (r) => dateTime(r.reported_at)],
      ["status.engine_queue", (r) => counts(r.engine)],
      ["status.relay", (r) => counts(r.relay)],
    ], status.replicas || [], { captionKey: "status.replicas", empty: "status.no_replicas" })));
}

export async function render(root) {
  const out = h("div", { "aria-live": "polite" });
  const checked = h("p", { class: "muted" });
  const refresh = h("button", { type: "button", i18n: "common.refresh", on: { click: () => load() } });
  root.append(h("div", { class: "actions" }, refresh), checked, out);
  async function load() {
    refresh.disabled = true;
    try {
      out.replaceChildren(view(await api("/admin/status")));
      checked.textContent = t("status.checked_at", { time: new Date().toLocaleTimeString() });
    } catch (err) {
      out.replaceChildren(alertBox(errorMessage(err)));
    } finally {
      refresh.disabled = false;
    }
  }
  await load();
}
