// The UI's language: chosen from what the user picked before (localStorage), else the browser's languages
// (navigator.languages), else English; t() looks strings up in messages.js, and the formatters use Intl
// with the same locale so numbers and dates read the way the language writes them.
import { MESSAGES, TERMS } from "./messages.js";

export const LOCALES = ["en", "zh-CN"];
const LANG_STORAGE = "llmkit.lang";

/** The locale for a stored choice and the browser's language list: any Chinese variant reads zh-CN. */
export function pickLocale(stored, languages) {
  if (LOCALES.includes(stored)) return stored;
  for (const tag of languages || []) {
    const lower = String(tag).toLowerCase();
    if (lower === "zh" || lower.startsWith("zh-")) return "zh-CN";
    if (lower === "en" || lower.startsWith("en-")) return "en";
  }
  return "en";
}

let locale = pickLocale(localStorage.getItem(LANG_STORAGE), navigator.languages || [navigator.language]);

export function getLocale() {
  return locale;
}

/** Switch language, remember it, re-translate the static page and tell the views to redraw theirs. */
export function setLocale(next) {
  if (!LOCALES.includes(next)) return;
  locale = next;
  localStorage.setItem(LANG_STORAGE, next);
  translatePage();
  document.dispatchEvent(new CustomEvent("llmkit:locale", { detail: next }));
}

export function t(key, vars = {}) {
  const table = MESSAGES[locale] || MESSAGES.en;
  const text = table[key] ?? MESSAGES.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

/** A registry word (relation, record type, metric) in the UI's language; unknown words as stored, "_" as spaces. */
// A classifier's per-label metrics are named `<metric>_<label>` (precision_spam): the metric in words, the label as is.
const PER_LABEL = /^(precision|recall|f1|support)_(.+)$/;

export function term(word) {
  const terms = TERMS[locale] || {};
  if (terms[word] !== undefined) return terms[word];
  const perLabel = PER_LABEL.exec(String(word));
  if (perLabel && terms[perLabel[1]] !== undefined) return t("term.perLabel", { metric: terms[perLabel[1]], label: perLabel[2] });
  return String(word).replaceAll("_", " ");
}

// Static markup names its strings: data-i18n (text), data-i18n-placeholder / -title / -aria-label (attributes).
const ATTRS = ["placeholder", "title", "aria-label"];

export function translatePage(root = document) {
  document.documentElement.lang = locale;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const attr of ATTRS) {
    for (const el of root.querySelectorAll(`[data-i18n-${attr}]`)) el.setAttribute(attr, t(el.getAttribute(`data-i18n-${attr}`)));
  }
}

// -- numbers and dates, formatted for the locale -----------------------------------------------------------

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

export function fmtNumber(value, digits = 4) {
  if (!finite(value)) return "—";
  if (Number.isInteger(value)) return value.toLocaleString(locale);
  if (Math.abs(value) >= 1000) return value.toLocaleString(locale, { maximumFractionDigits: 1 });
  return value.toLocaleString(locale, { minimumFractionDigits: digits, maximumFractionDigits: digits, useGrouping: false });
}

/** 1.2k / 3.4M in English, 1.2万 / 3.4亿 in Chinese (each language's own compact steps). */
export function fmtCount(value) {
  if (!finite(value)) return "—";
  // below ten thousand the figure is written whole and grouped, as fmtNumber writes counts: Chinese compact steps
  // start at 万, so one table read "3,753" beside "1765"
  if (Math.abs(value) < 10000) return Math.round(value).toLocaleString(locale);
  return new Intl.NumberFormat(locale, { notation: "compact", maximumFractionDigits: 1 }).format(value);
}

export function fmtBytes(bytes) {
  if (!finite(bytes)) return "—";
  const units = ["byte", "kilobyte", "megabyte", "gigabyte", "terabyte"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
  if (i === 0) return `${bytes.toLocaleString(locale)} B`;
  return new Intl.NumberFormat(locale, { style: "unit", unit: units[i], unitDisplay: "short",
    minimumFractionDigits: 1, maximumFractionDigits: 1 }).format(bytes);
}

export function fmtDate(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(locale, { dateStyle: "medium", timeStyle: "short" });
}

export function fmtPercent(p) {
  if (!finite(p)) return "—";
  return new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: p < 0.001 ? 2 : 1 }).format(p);
}
