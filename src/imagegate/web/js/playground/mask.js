// The edit stage: the uploaded image with a canvas over it on which a brush paints the area
// to change. The mask sent follows OpenAI's convention (docs/api.md, "Masks"): a PNG the size
// of the image, painted pixels fully transparent, every other pixel opaque.

import { t } from "../i18n.js";
import { download, field, h, toast } from "../ui.js";

export function maskStage(onChange = () => {}) {
  const picture = h("img", { alt: "" });
  const paint = h("canvas", { class: "mask-paint", role: "img", "aria-label": t("play.mask_canvas") });
  const stage = h("div", { class: "mask-stage", hidden: true }, picture, paint);
  const brush = h("input", { type: "range", min: "4", max: "120", value: "32" });
  const erase = h("input", { type: "checkbox" });
  const clear = h("button", { type: "button", i18n: "play.mask_clear", on: { click: () => {
    paint.getContext("2d").clearRect(0, 0, paint.width, paint.height);
    onChange();
  } } });
  // The mask as a file, for the code snippets' mask.png.
  const save = h("button", { type: "button", i18n: "play.mask_download", on: { click: async () => {
    const blob = await api.mask();
    if (blob) download(blob, "mask.png");
    else toast(t("play.mask_empty"));
  } } });
  const tools = h("div", { class: "mask-tools row", hidden: true },
    field("play.brush_size", brush),
    h("div", { class: "field check" }, h("label", {}, erase, " ", t("play.brush_erase"))),
    h("div", { class: "field" }, h("div", { class: "actions" }, clear, save)));
  let last = null;

  function point(event) {
    const box = paint.getBoundingClientRect();
    return { x: (event.clientX - box.left) * (paint.width / box.width),
      y: (event.clientY - box.top) * (paint.height / box.height),
      scale: paint.width / box.width };
  }

  function stroke(from, to) {
    const g = paint.getContext("2d");
    g.globalCompositeOperation = erase.checked ? "destination-out" : "source-over";
    g.strokeStyle = "#e0245e";
    g.lineCap = "round";
    g.lineJoin = "round";
    g.lineWidth = Number(brush.value) * to.scale;
    g.beginPath();
    g.moveTo(from.x, from.y);
    g.lineTo(to.x, to.y);
    g.stroke();
  }

  paint.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    paint.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  paint.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  for (const type of ["pointerup", "pointercancel"]) {
    paint.addEventListener(type, () => {
      if (last) onChange();
      last = null;
    });
  }

  const api = {
    stage, tools,
    /** Show `file` (an image the browser can decode); resolves with its size. */
    async load(file) {
      const url = URL.createObjectURL(file);
      picture.src = url;
      try {
        await picture.decode();
      } finally {
        URL.revokeObjectURL(url); // decoded (or not an image): the URL is no longer needed
      }
      paint.width = picture.naturalWidth;
      paint.height = picture.naturalHeight;
      picture.alt = t("play.mask_image_alt", { name: file.name });
      stage.hidden = false;
      tools.hidden = false;
      onChange();
      return { width: paint.width, height: paint.height };
    },
    reset() {
      picture.removeAttribute("src");
      stage.hidden = true;
      tools.hidden = true;
    },
    /** Whether any pixel is painted (erased strokes do not count). */
    painted() {
      if (stage.hidden || !paint.width) return false;
      const { data } = paint.getContext("2d").getImageData(0, 0, paint.width, paint.height);
      for (let i = 3; i < data.length; i += 4) if (data[i]) return true;
      return false;
    },
    /** The mask as a PNG blob, or null when nothing is painted (then the edit is
     *  image-to-image on the whole picture). */
    async mask() {
      if (!this.painted()) return null;
      const out = h("canvas", { width: paint.width, height: paint.height });
      const g = out.getContext("2d");
      g.fillStyle = "#000";
      g.fillRect(0, 0, out.width, out.height);
      g.globalCompositeOperation = "destination-out"; // painted -> alpha 0
      g.drawImage(paint, 0, 0);
      return new Promise((resolve) => out.toBlob(resolve, "image/png"));
    },
  };
  return api;
}
