// The playground: pick a served model, describe an image (or upload one and paint what to
// change), watch it stream in, and take away the image, its seed and its cost, or the same
// request as code. Only the fields the chosen model takes are sent.

import { api, apiStream, errorMessage } from "../api.js";
import { t } from "../i18n.js";
import { alertBox, field, h, money } from "../ui.js";
import { clearHistory, liveEntries, remember } from "../playground/history.js";
import { maskStage } from "../playground/mask.js";
import {
  canEdit, caps, checkSize, multiplier, priceLabel, priceRows, sizeChoices, takes, unitPriceMicros,
} from "../playground/models.js";
import { resultsView } from "../playground/results.js";
import { codeCard } from "../playground/code.js";

const QUALITY_KEYS = { auto: "play.q_auto", low: "play.q_low", medium: "play.q_medium",
  high: "play.q_high", standard: "play.q_standard", hd: "play.q_hd" };
const MAX_PREVIEWS = 3; // the API's limit on partial_images

const option = (value, text, extra = {}) => h("option", { value, text, ...extra });
const number = (attrs) => h("input", { type: "number", inputmode: "numeric", ...attrs });
/** Show or hide a part of the form; a hidden control is also disabled, so that the browser's
 *  form checks never stop on a control nobody can see. */
function shown(node, visible) {
  node.hidden = !visible;
  for (const control of node.querySelectorAll("input, select, textarea, button")) {
    control.disabled = !visible;
  }
}

export async function render(root, ctx) {
  const models = (await api("/v1/models")).data || [];
  const currency = ctx.me?.account?.currency || "USD";
  const state = { controller: null, file: null, painted: false, formProblem: false };

  // ---- the form's controls ----------------------------------------------------------------
  const model = h("select", { name: "model" }, ...models.map((m) => option(m.id,
    `${m.id} · ${priceLabel(m, currency)}${m.imagegate?.available === false ? ` (${t("play.unavailable")})` : ""}`,
    { disabled: m.imagegate?.available === false })));
  const firstUsable = models.find((m) => m.imagegate?.available !== false);
  if (firstUsable) model.value = firstUsable.id;
  const about = h("div", { class: "model-about" });

  const modeGenerate = h("input", { type: "radio", name: "mode", value: "generate", checked: true });
  const modeEdit = h("input", { type: "radio", name: "mode", value: "edit" });
  const modes = h("fieldset", { class: "modes" }, h("legend", { i18n: "play.mode" }),
    h("label", {}, modeGenerate, " ", t("play.mode_generate")),
    h("label", {}, modeEdit, " ", t("play.mode_edit")));

  const imageInput = h("input", { type: "file", accept: "image/png,image/jpeg,image/webp,image/gif" });
  const stage = maskStage(() => { state.painted = stage.painted(); refresh(); });
  const strength = number({ min: "0.01", max: "1", step: "0.01", inputmode: "decimal", placeholder: t("play.strength_default") });
  const editBox = h("div", { class: "edit-box", hidden: true },
    field("play.image", imageInput, "play.image_hint"), stage.stage, stage.tools,
    h("p", { class: "hint", i18n: "play.mask_hint" }),
    field("play.strength", strength, "play.strength_hint"));

  const prompt = h("textarea", { name: "prompt", required: true, rows: 3 });
  const negative = h("textarea", { name: "negative_prompt", rows: 2 });
  const size = h("select", { name: "size" });
  const width = number({ step: "8" });
  const height = number({ step: "8" });
  const customRow = h("div", { class: "row", hidden: true },
    field("play.width", width), field("play.height", height));
  const n = number({ min: "1", value: "1", required: true });
  const quality = h("select", { name: "quality" });
  const style = h("select", { name: "style" });
  const seed = number({ min: "0", max: "4294967295", placeholder: t("play.seed_random") });
  const steps = number({ min: "1" });
  const guidance = number({ min: "0", max: "50", step: "0.1", inputmode: "decimal" });

  const wrap = {
    negative: field("play.negative_prompt", negative),
    quality: field("play.quality", quality),
    style: field("play.style", style),
    seed: field("play.seed", seed, "play.seed_hint"),
    steps: field("play.steps", steps, "play.steps_hint"),
    guidance: field("play.guidance", guidance),
    strength: editBox.lastChild,
  };
  const estimate = h("p", { class: "estimate muted", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", i18n: "play.generate" });
  const stop = h("button", { type: "button", i18n: "play.stop", disabled: true,
    on: { click: () => state.controller?.abort() } });

  // Checked in run() rather than by the browser's bubbles, so that every problem is said the
  // same way: in an alert, in the page's language.
  const form = h("form", { class: "card play-form", "aria-labelledby": "play-title", novalidate: true },
    h("h1", { id: "play-title", i18n: "nav.playground" }),
    field("play.model", model), about, modes, editBox,
    field("play.prompt", prompt), wrap.negative,
    h("div", { class: "row" }, field("play.size", size), field("play.n", n)), customRow,
    h("div", { class: "row" }, wrap.quality, wrap.style),
    h("div", { class: "row" }, wrap.seed, wrap.steps, wrap.guidance),
    estimate, h("div", { class: "actions" }, submit, stop));

  // ---- output -----------------------------------------------------------------------------
  const status = h("p", { class: "play-status", role: "status", text: t("play.idle") });
  const problems = h("div", { class: "play-problems" });
  const cost = h("p", { class: "play-cost", "aria-live": "polite" });
  const view = resultsView({ onSeed: (value) => { seed.value = String(value); refresh(); seed.focus(); } });
  const output = h("section", { class: "card play-output", "aria-labelledby": "play-output-title" },
    h("h2", { id: "play-output-title", i18n: "play.output" }), status, problems,
    view.previews, view.results, cost);
  const code = codeCard(() => buildRequest(), `${location.origin}/v1`);
  const history = h("div", { class: "history" });
  const historyCard = h("section", { class: "card", "aria-labelledby": "play-history-title" },
    h("h2", { id: "play-history-title", i18n: "play.history" }),
    h("p", { class: "hint", i18n: "play.history_hint" }), history,
    h("div", { class: "actions" }, h("button", { type: "button", i18n: "play.history_clear",
      on: { click: () => { clearHistory(); showHistory(); } } })));

  root.append(h("div", { class: "play-grid" }, form, output), code.card, historyCard);

  // ---- keeping the controls in step with the model and mode ---------------------------------
  const current = () => models.find((m) => m.id === model.value);
  const editing = () => modeEdit.checked;

  function fillSelect(node, values, chosen, label = (v) => v) {
    const keep = node.value;
    node.replaceChildren(...values.map((v) => option(v, label(v))));
    node.value = values.includes(keep) ? keep : (chosen ?? values[0] ?? "");
  }

  function applyModel() {
    const m = current();
    const c = caps(m);
    const description = m?.imagegate?.description;
    const rows = priceRows(m, currency);
    about.replaceChildren(
      description ? h("p", { class: "muted", text: description }) : "",
      h("p", {}, h("strong", { i18n: "play.price" }), " ", priceLabel(m, currency)),
      rows.length > 1 ? h("details", {}, h("summary", { i18n: "play.price_table" }),
        h("ul", {}, ...rows.map(([what, price]) => h("li", { text: `${what}: ${price}` })))) : "");
    modeEdit.disabled = !canEdit(m);
    if (modeEdit.disabled && editing()) modeGenerate.checked = true;
    prompt.maxLength = c.max_prompt_chars || 4000;
    n.max = String(c.max_n || 1);
    if (Number(n.value) > (c.max_n || 1)) n.value = String(c.max_n || 1);
    steps.max = String(c.max_steps || 100);
    fillSelect(quality, c.qualities || [], c.default_quality, (q) => (QUALITY_KEYS[q] ? t(QUALITY_KEYS[q]) : q));
    fillSelect(style, c.styles || [], c.default_style);
    const rule = c.size_rule;
    for (const edge of [width, height]) {
      edge.min = rule ? String(rule.min_edge) : "";
      edge.max = rule ? String(rule.max_edge) : "";
      edge.step = rule ? String(rule.multiple_of || 1) : "1";
    }
    applyMode();
  }

  /** `fresh`: the mode changed, so the size goes back to that mode's default (an edit's is
   *  the image's own shape). */
  function applyMode(fresh = false) {
    const m = current();
    const c = caps(m);
    const edit = editing();
    const keep = fresh === true ? null : size.value;
    const choices = sizeChoices(m).map(([v, label]) => option(v, label));
    if (edit) choices.unshift(option("auto", t("play.size_auto")));
    if (c.size_rule) choices.push(option("custom", t("play.size_custom")));
    size.replaceChildren(...choices);
    const values = [...size.options].map((o) => o.value);
    size.value = values.includes(keep) ? keep : (edit ? "auto" : (values.includes(c.default_size) ? c.default_size : values[0]));
    if (!width.value && c.default_size) [width.value, height.value] = c.default_size.split("x");
    shown(editBox, edit);
    stage.stage.classList.toggle("no-mask", !c.supports_mask);
    shown(stage.tools, edit && Boolean(state.file) && Boolean(c.supports_mask));
    shown(wrap.negative, takes(m, "negative_prompt"));
    shown(wrap.quality, (c.qualities || []).length > 0);
    shown(wrap.style, (c.styles || []).length > 0);
    shown(wrap.seed, takes(m, "seed"));
    shown(wrap.steps, takes(m, "num_inference_steps"));
    shown(wrap.guidance, takes(m, "guidance_scale"));
    shown(wrap.strength, edit && takes(m, "strength"));
    refresh();
  }

  /** The size to send: WxH, or null for the model's (an edit's: the image's) own. */
  function chosenSize() {
    if (size.value === "custom") return `${width.value}x${height.value}`;
    return size.value && size.value !== "auto" ? size.value : null;
  }

  function checkCustomSize() {
    const problem = size.value === "custom"
      ? checkSize(current(), Number(width.value), Number(height.value)) : null;
    const message = problem ? t(...problem) : "";
    width.setCustomValidity(message);
    height.setCustomValidity(message);
    return message;
  }

  /** The request Generate sends, field by field: what `code` shows is exactly this. */
  function buildRequest() {
    const m = current();
    const c = caps(m);
    const edit = editing();
    const fields = { model: m?.id, prompt: prompt.value };
    if (takes(m, "negative_prompt") && negative.value.trim()) fields.negative_prompt = negative.value;
    const chosen = chosenSize();
    if (chosen) fields.size = chosen;
    fields.n = Number(n.value) || 1;
    if ((c.qualities || []).length) fields.quality = quality.value;
    if ((c.styles || []).length) fields.style = style.value;
    if (takes(m, "seed") && seed.value !== "") fields.seed = Number(seed.value);
    if (takes(m, "num_inference_steps") && steps.value !== "") fields.num_inference_steps = Number(steps.value);
    if (takes(m, "guidance_scale") && guidance.value !== "") fields.guidance_scale = Number(guidance.value);
    if (edit && takes(m, "strength") && strength.value !== "") fields.strength = Number(strength.value);
    fields.response_format = "url"; // a link, so the history can show it later
    fields.stream = true;
    // A model gives at most one preview fewer than its steps.
    const previews = fields.num_inference_steps ? Math.min(MAX_PREVIEWS, fields.num_inference_steps - 1) : MAX_PREVIEWS;
    if (previews > 0) fields.partial_images = previews;
    return { kind: edit ? "edits" : "generations", fields,
      mask: edit && Boolean(c.supports_mask) && state.painted };
  }

  function refresh() {
    if (state.formProblem) {
      problems.replaceChildren();
      state.formProblem = false;
    }
    checkCustomSize();
    shown(customRow, size.value === "custom");
    const { fields } = buildRequest();
    const unit = unitPriceMicros(current(), fields.size || (editing() ? null : caps(current()).default_size), fields.quality);
    if (unit === null) {
      estimate.textContent = t("play.estimate_unknown");
    } else {
      const each = Math.round(unit * multiplier(ctx.me));
      estimate.textContent = each
        ? t("play.estimate", { total: money(each * fields.n, currency), n: fields.n, each: money(each, currency) })
        : t("play.estimate_free");
    }
    code.update();
  }

  function showHistory() {
    const entries = liveEntries();
    history.replaceChildren(...(entries.length ? entries.map((e) => h("a", {
      href: e.url, target: "_blank", rel: "noopener noreferrer", class: "history-item",
      title: `${e.prompt} · ${e.model} · ${e.size || ""} · ${t("play.seed")} ${e.seed ?? "–"}`,
    }, h("img", { src: e.url, alt: e.prompt || e.model, loading: "lazy" })))
      : [h("p", { class: "muted", i18n: "play.history_empty" })]));
  }

  // ---- running a request ------------------------------------------------------------------
  async function run(event) {
    event.preventDefault();
    if (state.controller) return;
    problems.replaceChildren();
    cost.textContent = "";
    const complain = (message, inForm = true) => {
      problems.replaceChildren(alertBox(message));
      state.formProblem = inForm; // gone as soon as the form is changed
    };
    const sizeProblem = checkCustomSize();
    if (sizeProblem) {
      width.focus();
      return complain(sizeProblem);
    }
    if (!prompt.value.trim()) return complain(t("play.need_prompt"));
    if (editing() && !state.file) return complain(t("play.need_image"));
    const invalid = form.querySelector(":invalid");
    if (invalid) {
      invalid.focus();
      return complain(t("play.invalid", { field: invalid.labels?.[0]?.textContent || invalid.name,
        message: invalid.validationMessage }));
    }
    const request = buildRequest();
    const controller = new AbortController();
    state.controller = controller;
    submit.disabled = true;
    stop.disabled = false;
    view.clear();
    status.textContent = t("play.running");
    let body;
    if (request.kind === "edits") {
      body = new FormData();
      body.append("image", state.file, state.file.name || "image.png");
      const mask = request.mask ? await stage.mask() : null;
      if (mask) body.append("mask", mask, "mask.png");
      for (const [name, value] of Object.entries(request.fields)) body.append(name, String(value));
      body = { form: body, signal: controller.signal };
    } else {
      body = { json: request.fields, signal: controller.signal };
    }
    try {
      // The charge is what the account's spending moved by over the request (exact unless
      // another request of this account finished meanwhile); the estimate above is from prices.
      const before = await api("/v1/account", { signal: controller.signal }).catch(() => null);
      await apiStream(`/v1/images/${request.kind}`, body, (type, data) => {
        if (type.endsWith(".partial_image")) {
          view.preview(data);
          status.textContent = t("play.previewing");
        } else if (type.endsWith(".completed")) {
          view.completed(data, request.fields.prompt);
          remember({ url: data.url, expires_at: data.expires_at, prompt: request.fields.prompt,
            model: request.fields.model, size: data.size, seed: data.seed });
        }
      });
      status.textContent = t("play.done", { n: view.count() });
      showHistory();
      await showCost(before);
    } catch (err) {
      if (err.name === "AbortError") {
        status.textContent = t("play.stopped");
      } else {
        status.textContent = t("play.failed");
        complain(errorMessage(err), false);
      }
    } finally {
      state.controller = null;
      submit.disabled = false;
      stop.disabled = true;
    }
  }

  async function showCost(before) {
    if (!before?.account) return;
    const after = await api("/v1/account");
    const charged = after.account.spent_micros - before.account.spent_micros;
    cost.replaceChildren(h("strong", { i18n: "play.cost" }), " ", money(charged, currency), " · ",
      after.account.unlimited ? t("play.unlimited")
        : t("play.balance_now", { balance: money(after.account.balance_micros - after.account.held_micros, currency) }));
  }

  // ---- wiring -------------------------------------------------------------------------------
  model.addEventListener("change", applyModel);
  modeGenerate.addEventListener("change", () => applyMode(true));
  modeEdit.addEventListener("change", () => applyMode(true));
  form.addEventListener("input", refresh);
  form.addEventListener("change", refresh);
  form.addEventListener("submit", run);
  imageInput.addEventListener("change", async () => {
    const file = imageInput.files[0];
    problems.replaceChildren();
    state.file = null;
    stage.reset();
    if (file) {
      try {
        await stage.load(file);
        state.file = file;
      } catch {
        problems.replaceChildren(alertBox(t("play.bad_image")));
      }
    }
    applyMode();
  });

  if (!models.length) root.prepend(alertBox(t("play.no_models")));
  applyModel();
  showHistory();
  return () => {
    state.controller?.abort();
    view.clear();
    stage.reset();
  };
}
