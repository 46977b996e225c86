// What a generation shows as it streams: one preview per image, replaced by the image itself
// when it completes, with its seed, revised prompt, download and "use this seed".

import { t } from "../i18n.js";
import { dateTime, download, h } from "../ui.js";

const TYPES = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };

/** base64 -> Blob, decoded here: a data: URL cannot be fetched under connect-src 'self'. */
export function b64Blob(b64, format = "png") {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Blob([bytes], { type: TYPES[format] || "image/png" });
}

/** Show `blob` in `img` through a blob: URL that is given back once the image has loaded (it
 *  stays on screen): never sooner, since a URL revoked before its load starts is an error. A
 *  load that a newer src replaced has its URL given back with the newer one's. */
export function showBlob(img, blob) {
  const url = URL.createObjectURL(blob);
  const owed = [...(img.owedUrls || []), url];
  img.owedUrls = owed;
  const free = () => {
    if (img.owedUrls !== owed) return; // a newer src frees these
    for (const each of owed) URL.revokeObjectURL(each);
    img.owedUrls = [];
  };
  img.addEventListener("load", free, { once: true });
  img.addEventListener("error", free, { once: true });
  img.src = url;
}

export function resultsView({ onSeed }) {
  const previews = h("div", { class: "previews", "aria-live": "polite" });
  const results = h("div", { class: "results", "aria-live": "polite" });
  const shown = new Map(); // image_index -> preview figure
  let arrivals = 0;

  function preview(event) {
    const index = event.image_index || 0;
    let figure = shown.get(index);
    if (!figure) {
      figure = h("figure", { class: "preview" }, h("img", { "data-kind": "preview" }), h("figcaption"));
      shown.set(index, figure);
      previews.append(figure);
    }
    const [img, caption] = figure.children;
    const step = event.step && event.total_steps
      ? t("play.preview_step", { image: index + 1, step: event.step, total: event.total_steps })
      : t("play.preview_n", { image: index + 1, n: (event.partial_image_index || 0) + 1 });
    showBlob(img, b64Blob(event.b64_json, event.output_format));
    img.alt = step;
    img.dataset.arrival = String(++arrivals);
    caption.textContent = step;
  }

  function completed(event, prompt) {
    const index = event.image_index || 0;
    const figure = shown.get(index);
    if (figure) {
      figure.remove();
      shown.delete(index);
    }
    const blob = b64Blob(event.b64_json, event.output_format);
    const format = event.output_format || "png";
    const details = [h("div", {}, h("strong", { i18n: "play.seed" }), " ", event.seed ?? "–")];
    if (event.revised_prompt) {
      details.push(h("div", { class: "wrap" }, h("strong", { i18n: "play.revised_prompt" }), " ",
        event.revised_prompt));
    }
    if (event.url && event.expires_at) {
      details.push(h("div", {}, h("a", { href: event.url, target: "_blank", rel: "noopener noreferrer",
        i18n: "play.open_link" }), " ", h("span", { class: "muted",
        text: t("play.link_until", { when: dateTime(event.expires_at) }) })));
    }
    const actions = h("div", { class: "actions" },
      h("button", { type: "button", i18n: "play.download", on: {
        click: () => download(blob, `imagegate-${event.seed ?? index}.${format}`) } }),
      event.seed !== undefined && event.seed !== null
        ? h("button", { type: "button", i18n: "play.use_seed", on: { click: () => onSeed(event.seed) } })
        : null);
    const img = h("img", { alt: prompt, "data-kind": "result" });
    showBlob(img, blob);
    results.append(h("figure", { class: "result card", "data-kind": "result",
      "data-arrival": String(++arrivals) }, img, h("figcaption", {}, ...details, actions)));
  }

  return {
    previews, results, preview, completed,
    /** Forget the last run's pictures (their URLs are freed as their loads end). */
    clear() {
      shown.clear();
      previews.replaceChildren();
      results.replaceChildren();
    },
    count: () => results.children.length,
  };
}
