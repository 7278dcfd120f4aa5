// Shared helpers: element building, the API client (with the stored API key); number formatting lives in
// i18n.js (it follows the UI's locale) and is re-exported here.
import { t } from "./i18n.js";

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

/** The message of an OpenAI-shaped error body, or the HTTP status when the body is something else. */
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
    if (body && typeof body.detail === "string") return body.detail;
  } catch (_) {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText || t("error.requestFailed")}`;
}

export class ApiFailure extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** fetch a JSON API; throws ApiFailure with the server's error message on a non-2xx answer. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  const response = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new ApiFailure(await errorMessage(response), response.status);
  return response.json();
}

export { fmtBytes, fmtCount, fmtDate, fmtNumber } from "./i18n.js";
