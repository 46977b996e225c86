// What the playground needs to know about a model from GET /v1/models: its sizes, the fields
// it takes, and its price (docs/billing.md, "Prices": the same lookup the server does).

import { money } from "../ui.js";
import { t } from "../i18n.js";

export function caps(model) {
  return model?.imagegate?.capabilities || {};
}

export function takes(model, extension) {
  return (caps(model).extensions || []).includes(extension);
}

export function canEdit(model) {
  return (caps(model).max_reference_images || 0) >= 1;
}

/** The sizes offered as [value, label] pairs: the model's fixed list, else its aspect-ratio
 *  presets (fitted to its rule by the server), else its default size. */
export function sizeChoices(model) {
  const c = caps(model);
  if (c.sizes) return c.sizes.filter((s) => s !== "auto").map((s) => [s, s]);
  const presets = Object.entries(c.size_presets || {});
  if (presets.length) return presets.map(([ratio, size]) => [size, `${ratio} · ${size}`]);
  return c.default_size ? [[c.default_size, c.default_size]] : [];
}

/** Whether WxH obeys the model's size rule; a reason (string key + vars) when it does not. */
export function checkSize(model, width, height) {
  const rule = caps(model).size_rule;
  if (!rule) return null;
  const step = rule.multiple_of || 1;
  for (const edge of [width, height]) {
    if (!Number.isInteger(edge) || edge < rule.min_edge || edge > rule.max_edge || edge % step) {
      return ["play.size_rule", { min: rule.min_edge, max: rule.max_edge, step }];
    }
  }
  if (rule.max_pixels && width * height > rule.max_pixels) {
    return ["play.size_pixels", { max: rule.max_pixels }];
  }
  return null;
}

function micros(decimalText) {
  return Math.round(Number(decimalText || 0) * 1e6);
}

/** The price of one image in micro-units before the caller's multiplier, or null when the
 *  size is not known yet (an edit's size follows the uploaded image). */
export function unitPriceMicros(model, size, quality) {
  const pricing = model?.imagegate?.pricing;
  if (!pricing) return 0;
  const c = caps(model);
  const q = !quality || quality === "auto" ? c.default_quality : quality;
  const qualityFactor = Number(pricing.quality_multipliers?.[q] ?? 1);
  const table = pricing.table || {};
  if (size && q && table[`${size}/${q}`] !== undefined) return micros(table[`${size}/${q}`]);
  if (size && table[size] !== undefined) return micros(table[size]) * qualityFactor;
  if (!size && (Object.keys(table).length || Object.keys(pricing.size_multipliers || {}).length
                || pricing.base_pixels)) return null;
  let sizeFactor = 1;
  if (size) {
    const [w, h] = size.split("x").map(Number);
    sizeFactor = pricing.base_pixels ? (w * h) / pricing.base_pixels
      : Number(pricing.size_multipliers?.[size] ?? 1);
  }
  return micros(pricing.per_image) * sizeFactor * qualityFactor;
}

/** The caller's price multiplier: the key's own, else its account's. */
export function multiplier(me) {
  return Number(me?.key?.price_multiplier || me?.account?.price_multiplier || 1);
}

/** "free", or the per-image price, for the model list. */
export function priceLabel(model, currency) {
  const pricing = model?.imagegate?.pricing || {};
  const perImage = micros(pricing.per_image);
  const table = Object.values(pricing.table || {}).map(micros);
  if (!perImage && !table.some(Boolean)) return t("play.free");
  if (table.length) {
    return t("play.price_from", { price: money(Math.min(...table, perImage || Infinity), currency) });
  }
  return t("play.price_each", { price: money(perImage, currency) });
}

/** The price table's rows, [label, text], for the model's details. */
export function priceRows(model, currency) {
  const pricing = model?.imagegate?.pricing || {};
  const rows = Object.entries(pricing.table || {}).map(([what, price]) => [what, money(micros(price), currency)]);
  if (micros(pricing.per_image) || rows.length) {
    rows.push([t("play.price_other"), money(micros(pricing.per_image), currency)]);
  }
  return rows;
}
