// The "Explain" view: token attributions from POST /v1/explain, drawn as a heat map with the
// faithfulness check beside it (deletion AOPC against random deletion).
import { fmtNumber, t, term } from "./i18n.js";
import { api, h } from "./lib.js";

function tint(score) {
  // Green raises the target, red lowers it; the stronger the score, the stronger the colour.
  const a = Math.min(1, Math.abs(score)).toFixed(2);
  return score >= 0 ? `rgba(22,163,74,${a})` : `rgba(220,38,38,${a})`;
}

export function explainButton(getRequest) {
  const out = h("div", { class: "explain-view", "data-testid": "explain-view" });
  const button = h("button", { type: "button", class: "secondary small", "data-testid": "explain-button",
    title: t("ex.title"), "data-i18n-title": "ex.title", "data-i18n": "ex.button" }, t("ex.button"));
  button.addEventListener("click", async () => {
    button.disabled = true;
    out.replaceChildren(h("p", { class: "hint" }, t("ex.working")));
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
    title: fmtNumber(body.scores[i], 4),
  }, tok));
  // the server's verdict: "no_effect" when no deletion moved p by 1 % (nothing to rank: noise beating noise)
  const verdict = (body.faithfulness && body.faithfulness.verdict) || (body.aopc > body.aopc_random ? "faithful" : "not_better");
  return h("div", {},
    h("p", { class: "hint" }, t("ex.summary", { target: body.target, p: fmtNumber(body.probability, 3), method: term(body.method),
      seconds: fmtNumber(body.seconds, 2) })),
    h("div", { class: "tokens" }, ...tokens),
    h("p", { class: "hint", "data-testid": "explain-aopc" },
      // a completion's target is its log p (the line said p "drops by 19.688" beside p = 0.000)
      h("span", {}, t(body.quantity === "log_probability" ? "ex.faithfulLog" : "ex.faithful",
        { aopc: fmtNumber(body.aopc, 3), random: fmtNumber(body.aopc_random, 3) })), " ",
      h("span", { "data-testid": "explain-verdict" },
        t({ faithful: "ex.beats", not_better: "ex.noBetter", no_effect: "ex.noEffect" }[verdict] || "ex.noBetter"))),
    // the server's own words (what was cut, and where) in the tooltip; the line itself in the UI's language
    ...((body.warnings || []).length ? [h("p", { class: "hint", "data-testid": "explain-partial", title: body.warnings.join("\n"),
      "data-i18n": "ex.partial" }, t("ex.partial"))] : []));
}
