// The "Explain" view: token attributions from POST /v1/explain, drawn as a heat map with the
// faithfulness check beside it (deletion AOPC against random deletion).
import { api, h } from "./lib.js";

function tint(score) {
  // Green raises the target, red lowers it; the stronger the score, the stronger the colour.
  const a = Math.min(1, Math.abs(score)).toFixed(2);
  return score >= 0 ? `rgba(22,163,74,${a})` : `rgba(220,38,38,${a})`;
}

export function explainButton(getRequest) {
  const out = h("div", { class: "explain-view", "data-testid": "explain-view" });
  const button = h("button", { type: "button", class: "secondary small", "data-testid": "explain-button",
    title: "Which input tokens this depends on (Integrated Gradients)" }, "Explain");
  button.addEventListener("click", async () => {
    button.disabled = true;
    out.replaceChildren(h("p", { class: "hint" }, "explaining…"));
    try {
      const body = await api("/v1/explain", { method: "POST", body: { method: "ig", ...getRequest() } });
      out.replaceChildren(render(body));
    } catch (err) {
      out.replaceChildren(h("p", { class: "error-text", role: "alert" }, err.message));
    } finally {
      button.disabled = false;
    }
  });
  return h("div", { class: "explain" }, button, out);
}

function render(body) {
  const tokens = body.tokens.map((tok, i) => h("span", {
    class: body.special[i] ? "tok special" : "tok", "data-testid": "explain-token",
    style: body.special[i] ? "" : `background:${tint(body.normalized[i])}`,
    title: `${body.scores[i].toFixed(4)}`,
  }, tok));
  const beats = body.aopc > body.aopc_random;
  return h("div", {},
    h("p", { class: "hint" }, `target ${body.target} (p = ${body.probability.toFixed(3)}), ${body.method}, `
      + `${body.seconds.toFixed(2)} s`),
    h("div", { class: "tokens" }, ...tokens),
    h("p", { class: "hint", "data-testid": "explain-aopc" },
      `faithfulness: deleting the top tokens drops it by ${body.aopc.toFixed(3)} on average, random tokens by `
      + `${body.aopc_random.toFixed(3)} ${beats ? "✓" : "(no better than random)"}`));
}
