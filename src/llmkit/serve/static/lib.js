// Shared helpers: element building, the API client (with the stored API key); number formatting lives in
// i18n.js (it follows the UI's locale) and is re-exported here.
import { fmtNumber, t } from "./i18n.js";

const KEY_STORAGE = "llmkit.apiKey";

export function getApiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export function authHeaders(extra = {}) {
  const key = getApiKey().trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/** h("div", {class: "x", dataset: {testid: "y"}, onclick: fn}, "text", child) — never parses HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const THUMB = "M7 10v11H3V10h4zm0 0 4-8a3 3 0 0 1 3 3v4h5.5a2 2 0 0 1 2 2.3l-1.4 8A2 2 0 0 1 18.1 21H7";

/** A thumbs-up (or, turned over, thumbs-down) icon as inline SVG: no icon font, no emoji font needed. */
export function thumbIcon(down = false) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", THUMB);
  if (down) path.setAttribute("transform", "rotate(180 12 12)");
  svg.append(path);
  return svg;
}

/** One line for an error answer: the message of an OpenAI-shaped body ({"error": {"message"}}), a bare
 * {"error": "..."} or FastAPI's {"detail": "..."}; else (a proxy's HTML page, an empty body) what the status means,
 * in the UI's language, never the body itself. */
export async function errorMessage(response) {
  let text = "";
  try {
    text = await response.text();
    const body = JSON.parse(text);
    const said = body && (body.error && typeof body.error === "object" ? body.error.message : body.error ?? body.detail);
    if (typeof said === "string" && said.trim()) return said.trim();
  } catch (_) {
    // not JSON: fall through to what the status says
  }
  const status = response.status;
  if (status === 429) {
    const seconds = Number(response.headers.get("Retry-After"));
    return Number.isFinite(seconds) && seconds > 0 ? t("error.busyFor", { status, seconds: fmtNumber(Math.ceil(seconds)) })
      : t("error.busy", { status });
  }
  if ([502, 503, 504].includes(status)) return t("error.unavailable", { status });
  return t("error.status", { status });
}

export class ApiFailure extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** fetch(), with a network failure (the server stopped, the connection refused) turned into an ApiFailure saying
 * so in the UI's language instead of the browser's "Failed to fetch"; an abort stays an AbortError. */
export async function reach(path, options = {}) {
  try {
    return await fetch(path, options);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiFailure(t("error.unreachable"), 0);
  }
}

/** fetch a JSON API; throws ApiFailure with the server's error message on a non-2xx answer. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  const response = await reach(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new ApiFailure(await errorMessage(response), response.status);
  try {
    return await response.json();
  } catch (_) {
    throw new ApiFailure(t("error.unreadable"), response.status); // a 200 that is not JSON: a proxy's page
  }
}

export { fmtBytes, fmtCount, fmtDate, fmtNumber } from "./i18n.js";
