// The API as the console calls it: the signed-in key goes in the Authorization header and
// nowhere else (kept in sessionStorage, so it is gone when the tab closes).

import { t } from "./i18n.js";

const KEY = "imagegate.key";

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error answer in OpenAI's envelope, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, body = {}, retryAfter = null) {
    const error = body.error || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.type = error.type || null;
    this.param = error.param || null;
    this.retryAfter = retryAfter;
  }
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, value);
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

async function send(path, { method = "GET", json, form, query, signal } = {}) {
  const init = { method, signal, headers: headers(), credentials: "omit", cache: "no-store" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(withQuery(path, query), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { error: { message: String(err.message || err) } });
  }
  if (!response.ok) {
    let body = {};
    try {
      body = await response.json();
    } catch { /* not JSON: keep the status */ }
    throw new ApiError(response.status, body, response.headers.get("retry-after"));
  }
  return response;
}

/** JSON in, JSON out. */
export async function api(path, options = {}) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/** The body as text (CSV downloads). */
export async function apiText(path, options = {}) {
  return (await send(path, options)).text();
}

/** POST a request with `stream: true` and call onEvent(type, data) for each server-sent event
 *  as it arrives. An error before the stream starts is thrown as ApiError; an `error` event
 *  after it started is thrown too. */
export async function apiStream(path, { json, form, signal }, onEvent) {
  const response = await send(path, { method: "POST", json, form, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (!data.length) continue; // a keep-alive comment
      const payload = JSON.parse(data.join("\n"));
      if (type === "error") throw new ApiError(-1, payload);
      onEvent(type, payload);
    }
  }
}

/** What to tell a person about an error, in their language. */
export function errorMessage(err) {
  if (!(err instanceof ApiError)) return t("error.unexpected", { message: String(err.message || err) });
  const detail = err.message;
  switch (err.status) {
    case -1: return t("error.stream", { message: detail });
    case 0: return t("error.network");
    case 400: return t("error.400", { message: detail });
    case 401: return t("error.401");
    case 402: return t("error.402");
    case 403: return t("error.403", { message: detail });
    case 404: return t("error.404", { message: detail });
    case 409: return t("error.409", { message: detail });
    case 413: return t("error.413");
    case 429: return err.retryAfter
      ? t("error.429_after", { seconds: err.retryAfter, message: detail })
      : t("error.429", { message: detail });
    case 503: return t("error.503", { message: detail });
    default: return err.status >= 500 ? t("error.5xx", { message: detail }) : detail;
  }
}
