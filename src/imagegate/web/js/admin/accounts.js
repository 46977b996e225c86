// Admin: accounts. List them with their money, open one, top one up with a note, change its
// price multiplier or whether it may run below zero.

import { api, errorMessage } from "../api.js";
import { t } from "../i18n.js";
import { alertBox, dateTime, field, h, money, table, toast } from "../ui.js";
import { formDialog } from "./dialog.js";

function yesNo(value) {
  return value ? t("common.yes") : t("common.no");
}

function createForm(reload) {
  const name = h("input", { name: "name", required: true, maxlength: "200", autocomplete: "off" });
  const unlimited = h("input", { type: "checkbox", name: "unlimited", id: "new-account-unlimited" });
  const multiplier = h("input", { name: "price_multiplier", value: "1", required: true, inputmode: "decimal" });
  const problem = h("div");
  const form = h("form", { class: "card", "aria-labelledby": "create-account", on: { submit: async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    try {
      const created = await api("/admin/accounts", { method: "POST", json: {
        name: name.value.trim(), unlimited: unlimited.checked, price_multiplier: multiplier.value.trim() } });
      toast(t("accounts.created", { name: created.name }));
      form.reset();
      await reload();
    } catch (err) {
      problem.replaceChildren(alertBox(errorMessage(err)));
    }
  } } },
  h("h2", { id: "create-account", i18n: "accounts.create" }),
  h("div", { class: "row top" }, field("accounts.name", name), field("accounts.multiplier", multiplier, "accounts.multiplier_hint")),
  h("div", { class: "checkline" }, unlimited, h("label", { for: unlimited.id, i18n: "accounts.unlimited" })),
  problem,
  h("button", { type: "submit", class: "primary", i18n: "accounts.create_submit" }));
  return form;
}

function topUp(parent, account, reload) {
  const amount = h("input", { name: "amount", required: true, inputmode: "decimal", autocomplete: "off",
    pattern: "-?[0-9]+(\\.[0-9]{1,6})?" });
  const note = h("input", { name: "note", maxlength: "1000", autocomplete: "off" });
  return formDialog(parent, {
    title: t("accounts.topup_title", { name: account.name }),
    body: [
      h("p", { class: "muted", text: t("accounts.balance_now", { amount: money(account.balance_micros, account.currency) }) }),
      field("accounts.amount", amount, "accounts.amount_hint"), field("accounts.note", note)],
    submitKey: "accounts.topup_submit",
    onSubmit: async () => {
      const after = await api(`/admin/accounts/${account.id}/topup`, { method: "POST",
        json: { amount: amount.value.trim(), note: note.value.trim() || null } });
      toast(t("accounts.topped_up", { name: account.name, amount: money(after.balance_micros, after.currency) }));
      await reload();
    },
  });
}

function edit(parent, account, reload) {
  const multiplier = h("input", { name: "price_multiplier", value: account.price_multiplier, required: true,
    inputmode: "decimal" });
  const unlimited = h("input", { type: "checkbox", name: "unlimited", id: "edit-account-unlimited",
    checked: account.unlimited });
  return formDialog(parent, {
    title: t("accounts.edit_title", { name: account.name }),
    body: [field("accounts.multiplier", multiplier, "accounts.multiplier_hint"),
      h("div", { class: "checkline" }, unlimited, h("label", { for: unlimited.id, i18n: "accounts.unlimited" }))],
    onSubmit: async () => {
      await api(`/admin/accounts/${account.id}`, { method: "PATCH",
        json: { price_multiplier: multiplier.value.trim(), unlimited: unlimited.checked } });
      toast(t("accounts.saved", { name: account.name }));
      await reload();
    },
  });
}

export async function render(root) {
  const list = h("div", { "aria-live": "polite" });
  async function reload() {
    try {
      const { data } = await api("/admin/accounts");
      const cost = (a, micros) => money(micros, a.currency);
      list.replaceChildren(table([
        ["accounts.name", (a) => a.name],
        ["accounts.id", (a) => a.id],
        ["accounts.balance", (a) => cost(a, a.balance_micros)],
        ["accounts.held", (a) => cost(a, a.held_micros)],
        ["accounts.spent", (a) => cost(a, a.spent_micros)],
        ["accounts.unlimited", (a) => yesNo(a.unlimited)],
        ["accounts.multiplier", (a) => a.price_multiplier],
        ["accounts.created_at", (a) => dateTime(a.created_at)],
        ["accounts.actions", (a) => h("div", { class: "cell-actions" },
          h("button", { type: "button", text: t("accounts.topup"), "aria-label": t("accounts.topup_for", { name: a.name }),
            on: { click: () => topUp(root, a, reload) } }),
          h("button", { type: "button", text: t("accounts.edit"), "aria-label": t("accounts.edit_for", { name: a.name }),
            on: { click: () => edit(root, a, reload) } }))],
      ], data, { captionKey: "accounts.list" }));
    } catch (err) {
      list.replaceChildren(alertBox(errorMessage(err)));
    }
  }
  root.append(createForm(reload), list);
  await reload();
}
