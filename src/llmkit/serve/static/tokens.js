// An answer as token spans with their log-probabilities (choices[0].logprobs.content of the streamed chunks):
// hovering (or tapping) a token shows its probability and the top alternatives in a tooltip kept inside
// the viewport. A byte-level token that holds only part of a character is joined with the next ones until
// the bytes decode, so Chinese and emoji show whole, never as U+FFFD.
import { fmtPercent, t } from "./i18n.js";
import { h } from "./lib.js";

/** [{text, entries}] from logprob entries ({token, logprob, bytes, top_logprobs}). */
export function tokenPieces(entries) {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const encoder = new TextEncoder();
  const pieces = [];
  let bytes = [];
  let group = [];
  for (const entry of entries) {
    group.push(entry);
    bytes.push(...(Array.isArray(entry.bytes) ? entry.bytes : encoder.encode(entry.token || "")));
    try {
      pieces.push({ text: decoder.decode(new Uint8Array(bytes)), entries: group });
      bytes = [];
      group = [];
    } catch (_) {
      // an incomplete UTF-8 sequence: the character goes on in the next token
    }
  }
  if (group.length) pieces.push({ text: new TextDecoder().decode(new Uint8Array(bytes)), entries: group });
  return pieces;
}

/** Whitespace made visible, so a tooltip can show a space or a newline token. */
/** An alternative as it reads: its text, or when it is part of a character (a byte-level piece of 你 decodes to
 * "\uFFFD", and a Chinese answer's tooltip was a column of them) its bytes, <0xE4><0xBD>, as explain shows them. */
export function altText(alt) {
  const bytes = Array.isArray(alt.bytes) ? alt.bytes : null;
  if (bytes && bytes.length) {
    try {
      return visible(new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes)));
    } catch (_) {
      return bytes.map((b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`).join("");
    }
  }
  return visible(alt.token);
}

/** Whether an alternative is the token chosen: by bytes (two different pieces both read "\uFFFD"). */
export function sameToken(alt, chosen) {
  if (Array.isArray(alt.bytes) && Array.isArray(chosen.bytes)) {
    return alt.bytes.length === chosen.bytes.length && alt.bytes.every((b, i) => b === chosen.bytes[i]);
  }
  return alt.token === chosen.token;
}

function visible(text) {
  return text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

/** Render `answer` into `content` as token spans; false (content left as it is) when the tokens do not
 * spell the answer exactly, e.g. no logprobs came (a backend without them) or a stop string cut the text. */
export function renderTokens(content, entries, answer) {
  if (!entries.length) return false;
  const pieces = tokenPieces(entries);
  if (pieces.map((p) => p.text).join("") !== answer) return false;
  content.replaceChildren(...pieces.map((piece) => {
    const p = Math.exp(piece.entries.reduce((sum, e) => sum + e.logprob, 0));
    const span = h("span", { class: p < 0.5 ? "lp-tok unsure" : "lp-tok", "data-testid": "lp-token" }, piece.text);
    span.lpPiece = piece;
    span.lpProbability = p;
    return span;
  }));
  content.classList.add("has-logprobs");
  bindTooltip(content);
  return true;
}

let tip = null;
let tipFor = null;

function tooltip() {
  if (!tip) {
    tip = h("div", { class: "lp-tip", role: "tooltip", id: "lp-tip", "data-testid": "lp-tooltip", hidden: true });
    document.body.append(tip);
    const hide = () => hideTip();
    window.addEventListener("scroll", hide, true);
    window.addEventListener("resize", hide);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") hide(); });
  }
  return tip;
}

function hideTip() {
  if (tip) tip.hidden = true;
  tipFor = null;
}

function showTip(span) {
  const box = tooltip();
  const { lpPiece: piece, lpProbability: p } = span;
  const first = piece.entries[0];
  const tops = (first.top_logprobs || []).slice(0, 5);
  box.replaceChildren(
    h("div", { class: "lp-head" }, h("code", { class: "lp-token-text" }, visible(piece.text)),
      h("span", { class: "lp-prob", "data-testid": "lp-probability" }, t("lp.probability", { p: fmtPercent(p) }))),
    tops.length ? h("div", { class: "lp-alt-title" }, t("lp.alternatives")) : null,
    tops.length ? h("ul", { class: "lp-alts" }, tops.map((alt) => h("li", {
      class: sameToken(alt, first) ? "chosen" : "", "data-testid": "lp-alternative" },
    h("code", {}, altText(alt)), h("span", {}, fmtPercent(Math.exp(alt.logprob)))))) : null);
  box.hidden = false;
  tipFor = span;
  // Below the token, or above it when there is no room below; never past the viewport's sides.
  const r = span.getBoundingClientRect();
  const margin = 6;
  const width = box.offsetWidth;
  const height = box.offsetHeight;
  const left = Math.max(margin, Math.min(r.left, window.innerWidth - width - margin));
  let top = r.bottom + margin;
  if (top + height > window.innerHeight - margin) top = Math.max(margin, r.top - height - margin);
  box.style.left = `${left}px`;
  box.style.top = `${top}px`;
}

function bindTooltip(content) {
  if (content.dataset.tipBound) return;
  content.dataset.tipBound = "1";
  const tokenOf = (event) => (event.target instanceof Element ? event.target.closest(".lp-tok") : null);
  // A mouse shows the tooltip while it rests on a token; a touch screen has no hover, so there a tap
  // shows it and a second tap on the same token (or a tap elsewhere) hides it.
  content.addEventListener("pointerover", (event) => {
    const span = tokenOf(event);
    if (span && event.pointerType === "mouse") showTip(span);
  });
  content.addEventListener("pointerout", (event) => {
    const into = event.relatedTarget instanceof Element ? event.relatedTarget.closest(".lp-tok") : null;
    if (event.pointerType === "mouse" && tokenOf(event) && !into) hideTip();
  });
  content.addEventListener("click", (event) => {
    const span = tokenOf(event);
    if (!span) return;
    event.stopPropagation();
    if (event.pointerType !== "mouse" && tipFor === span && !tooltip().hidden) hideTip(); else showTip(span);
  });
  if (!document.body.dataset.tipDismiss) {
    document.body.dataset.tipDismiss = "1";
    document.addEventListener("click", (event) => {
      if (!(event.target instanceof Element && event.target.closest(".lp-tip"))) hideTip();
    });
  }
}
