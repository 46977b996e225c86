// This browser's recent images: links only (never image bytes, never the key), kept in
// localStorage and shown while their signed links still work.

const STORE = "imagegate.history";
export const MAX_ENTRIES = 50;

function read() {
  try {
    const entries = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch {
    return []; // written by something else: start again
  }
}

function write(entries) {
  try {
    localStorage.setItem(STORE, JSON.stringify(entries.slice(0, MAX_ENTRIES)));
  } catch { /* storage full or off: history is a convenience */ }
}

/** Entries whose link has not expired, newest first; expired ones are dropped for good. */
export function liveEntries(now = Date.now()) {
  const entries = read();
  const live = entries.filter((e) => e && typeof e.url === "string" && (e.expires_at || 0) * 1000 > now);
  if (live.length !== entries.length) write(live);
  return live;
}

/** Remember an image that has a link: {url, expires_at, prompt, model, size, seed}. */
export function remember({ url, expires_at, prompt, model, size, seed }) {
  if (!url || !expires_at) return; // an answer without a link has nothing to keep
  write([{ url, expires_at, prompt, model, size, seed, created: Math.floor(Date.now() / 1000) },
    ...liveEntries()]);
}

export function clearHistory() {
  localStorage.removeItem(STORE);
}
