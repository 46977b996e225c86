// Admin: API keys. List them with their limits, create one (its full key shown once), edit
// its limits, allow-lists and expiry, disable, enable or delete it.

import { api, errorMessage } from "../api.js";
import { t } from "../i18n.js";
import { alertBox, copy, dateTime, field, h, select, table, toast } from "../ui.js";
import { adminError, confirmDialog, formDialog } from "./dialog.js";

/** "2030-01-31T12:00" for a datetime-local input, in this browser's time zone. */
function localInput(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())}T${pad(when.getHours())}:${pad(when.getMinutes())}`;
}

function words(text) {
  const list = text.split(/[\s,]+/).filter(Boolean);
  return list.length ? list : null;
}

function whole(text) {
  return text.trim() === "" ? null : Number(text);
}

/** The fields a key is created and edited with; values() gives them as the API takes them
 *  (null: no limit, every model, any address, the account's multiplier). */
function keyFields(models, key = {}) {
  const name = h("input", { name: "name", required: true, maxlength: "200", autocomplete: "off", value: key.name || "" });
  const expires = h("input", { type: "datetime-local", name: "expires_at", value: localInput(key.expires_at) });
  const picked = new Set(key.allowed_models || []);
  const boxes = models.map((id) => h("input", { type: "checkbox", value: id, checked: picked.has(id) }));
  const modelList = h("fieldset", { class: "model-picks" },
    h("legend", { i18n: "keys.allowed_models" }),
    h("small", { class: "hint", i18n: "keys.allowed_models_hint" }),
    ...boxes.map((box) => h("label", { class: "checkline" }, box, h("span", { text: box.value }))));
  const ips = h("input", { name: "allowed_ips", autocomplete: "off", placeholder: "203.0.113.7, 10.0.0.0/8",
    value: (key.allowed_ips || []).join(", ") });
  const rpm = h("input", { type: "number", name: "rpm_limit", min: "1", step: "1", value: key.rpm_limit ?? "" });
  const concurrency = h("input", { type: "number", name: "concurrency_limit", min: "1", step: "1",
    value: key.concurrency_limit ?? "" });
  const multiplier = h("input", { name: "price_multiplier", inputmode: "decimal", autocomplete: "off",
    value: key.price_multiplier ?? "" });
  return {
    nodes: [
      field("keys.name", name),
      field("keys.expires_at", expires, "keys.expires_hint"),
      modelList,
      field("keys.allowed_ips", ips, "keys.allowed_ips_hint"),
      h("div", { class: "row top" }, field("keys.rpm_limit", rpm, "keys.no_limit_hint"),
        field("keys.concurrency_limit", concurrency, "keys.no_limit_hint")),
      field("keys.multiplier", multiplier, "keys.multiplier_hint"),
    ],
    values: () => {
      const allowed = boxes.filter((box) => box.checked).map((box) => box.value);
      return {
        name: name.value.trim(),
        expires_at: expires.value ? new Date(expires.value).toISOString() : null,
        allowed_models: allowed.length ? allowed : null,
        allowed_ips: words(ips.value),
        rpm_limit: whole(rpm.value),
        concurrency_limit: whole(concurrency.value),
        price_multiplier: multiplier.value.trim() || null,
      };
    },
  };
}

/** The new key, shown this once, with a Copy button. */
function newKeyBox(created, accountName) {
  const box = h("section", { class: "card new-key", "aria-labelledby": "new-key-title", tabindex: "-1" },
    h("h2", { id: "new-key-title", i18n: "keys.new_key_title" }),
    h("p", { class: "warning", role: "note", text: t("keys.new_key_warning", { account: accountName }) }),
    h("div", { class: "key-line" },
      h("code", { class: "key-value", text: created.key }),
      h("button", { type: "button", class: "primary", i18n: "keys.copy", on: { click: () => copy(created.key) } })),
    h("button", { type: "button", i18n: "keys.done", on: { click: () => box.remove() } }));
  return box;
}

function createForm(accounts, models, onCreated) {
  const account = select(accounts.map((a) => [String(a.id), a.name]), null, { name: "account", required: true });
  const admin = h("input", { type: "checkbox", name: "is_admin", id: "new-key-admin" });
  const fields = keyFields(models);
  const problem = h("div");
  const form = h("form", { class: "card", "aria-labelledby": "create-key", on: { submit: async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    try {
      const created = await api("/admin/keys", { method: "POST", json: {
        account: Number(account.value), is_admin: admin.checked, ...fields.values() } });
      const owner = account.value;
      const ownerName = account.selectedOptions[0]?.textContent || "";
      form.reset();
      account.value = owner; // the next key is often for the same account
      await onCreated(created, ownerName);
    } catch (err) {
      problem.replaceChildren(alertBox(errorMessage(err)));
    }
  } } },
  h("h2", { id: "create-key", i18n: "keys.create" }),
  field("keys.account", account),
  ...fields.nodes,
  h("div", { class: "checkline" }, admin, h("label", { for: admin.id, i18n: "keys.is_admin" })),
  problem,
  h("button", { type: "submit", class: "primary", i18n: "keys.create_submit" }));
  return form;
}

function editKey(parent, key, models, reload) {
  const fields = keyFields(models, key);
  return formDialog(parent, {
    title: t("keys.edit_title", { name: key.name, id: key.id }),
    body: fields.nodes,
    onSubmit: async () => {
      await api(`/admin/keys/${key.id}`, { method: "PATCH", json: fields.values() });
      toast(t("keys.saved", { name: key.name }));
      await reload();
    },
  });
}

function status(key) {
  if (!key.enabled) return h("span", { class: "badge off", i18n: "keys.disabled" });
  if (key.expires_at && new Date(key.expires_at) <= new Date()) return h("span", { class: "badge warn", i18n: "keys.expired" });
  return h("span", { class: "badge ok", i18n: "keys.enabled" });
}

export async function render(root) {
  const created = h("div");
  const problem = h("div");
  const list = h("div", { "aria-live": "polite" });
  let accounts = [];
  let models = [];
  try {
    [accounts, models] = await Promise.all([
      api("/admin/accounts").then((body) => body.data),
      api("/admin/models").then((body) => body.data.map((m) => m.id))]);
  } catch (err) {
    root.append(alertBox(errorMessage(err)));
    return;
  }
  const accountName = (id) => accounts.find((a) => a.id === id)?.name ?? `#${id}`;
  const run = async (action) => {
    problem.replaceChildren();
    try {
      await action();
      await reload();
    } catch (err) {
      problem.replaceChildren(alertBox(adminError(err)));
    }
  };
  async function reload() {
    try {
      const { data } = await api("/admin/keys");
      const label = (k, key) => t(key, { name: k.name, id: k.id });
      list.replaceChildren(table([
        ["keys.id", (k) => k.id],
        ["keys.account", (k) => accountName(k.account_id)],
        ["keys.name", (k) => k.name],
        ["keys.prefix", (k) => h("code", { text: `${k.prefix}…` })],
        ["keys.admin", (k) => (k.is_admin ? t("common.yes") : t("common.no"))],
        ["keys.status", status],
        ["keys.expires_at", (k) => (k.expires_at ? dateTime(k.expires_at) : t("keys.never"))],
        ["keys.allowed_models", (k) => (k.allowed_models ? k.allowed_models.join(", ") : t("keys.all"))],
        ["keys.allowed_ips", (k) => (k.allowed_ips ? k.allowed_ips.join(", ") : t("keys.any"))],
        ["keys.rpm_limit", (k) => k.rpm_limit ?? "—"],
        ["keys.concurrency_limit", (k) => k.concurrency_limit ?? "—"],
        ["keys.multiplier", (k) => k.price_multiplier ?? "—"],
        ["keys.actions", (k) => h("div", { class: "cell-actions" },
          h("button", { type: "button", text: t("keys.edit"), "aria-label": label(k, "keys.edit_for"),
            on: { click: () => editKey(root, k, models, reload) } }),
          k.enabled
            ? h("button", { type: "button", text: t("keys.disable"), "aria-label": label(k, "keys.disable_for"),
              on: { click: () => run(async () => {
                await api(`/admin/keys/${k.id}/disable`, { method: "POST" });
                toast(label(k, "keys.disabled_note"));
              }) } })
            : h("button", { type: "button", text: t("keys.enable"), "aria-label": label(k, "keys.enable_for"),
              on: { click: () => run(async () => {
                await api(`/admin/keys/${k.id}/enable`, { method: "POST" });
                toast(label(k, "keys.enabled_note"));
              }) } }),
          h("button", { type: "button", class: "danger", text: t("keys.delete"), "aria-label": label(k, "keys.delete_for"),
            on: { click: () => confirmDialog(root, {
              title: label(k, "keys.delete_title"), message: t("keys.delete_warning"), submitKey: "keys.delete",
              onSubmit: async () => {
                await api(`/admin/keys/${k.id}`, { method: "DELETE" });
                toast(label(k, "keys.deleted_note"));
                await reload();
              } }) } }))],
      ], data, { captionKey: "keys.list" }));
    } catch (err) {
      list.replaceChildren(alertBox(errorMessage(err)));
    }
  }
  root.append(created, createForm(accounts, models, async (key, account) => {
    const box = newKeyBox(key, account);
    created.replaceChildren(box);
    box.focus();
    await reload();
  }), problem, list);
  await reload();
}
