// A reward-tuned run's panel on the dashboard: its reward curves and, for GRPO, greedy answers to val prompts
// before training beside those of the latest evaluation. Built from GET /api/runs/{ref}/metrics ("rewards",
// "samples"); hidden for runs that logged no rewards.
import { drawLossChart } from "./chart.js";
import { fmtNumber, t } from "./i18n.js";
import { h } from "./lib.js";

// One chart per quantity: a margin (log-ratio units) and an accuracy (a share of pairs) never share an axis.
const CHARTS = {
  reward: [{ title: "rw.reward", train: "train", val: "val",
    labels: { y: "rw.axisReward", train: "rw.sampled", val: "rw.valGreedy" } }],
  margin: [
    { title: "rw.margin", train: "train", val: "val", labels: { y: "rw.axisMargin", train: "rw.train", val: "rw.val" } },
    { title: "rw.accuracy", train: "accuracy_train", val: "accuracy_val",
      labels: { y: "rw.axisAccuracy", train: "rw.train", val: "rw.val" } },
  ],
};

// Model text in a cell: wrapped, not widening the table past reading width (the table scrolls on a phone).
const TEXT_CELL = "white-space: pre-wrap; overflow-wrap: anywhere; min-width: 9rem; max-width: 22rem";

export function initRewards(panel) {
  let shown = null; // {run, rewards, samples, samples_after_step} of the run on display
  let canvases = [];

  function render() {
    if (!shown || !shown.rewards) {
      panel.hidden = true;
      panel.replaceChildren();
      canvases = [];
      return;
    }
    const specs = CHARTS[shown.rewards.metric] || CHARTS.reward;
    const drawn = specs.filter((spec) => shown.rewards[spec.train].length || shown.rewards[spec.val].length);
    canvases = drawn.map((spec) => ({ spec, canvas: h("canvas", { "data-testid": "reward-chart", role: "img",
      "aria-label": t(spec.title), style: "width: 100%; height: 240px; display: block" }) }));
    panel.replaceChildren(...[
      h("h2", { id: "rewards-title" }, t("rw.title", { run: shown.run.ref })),
      h("div", { class: "detail-grid" }, canvases.map(({ spec, canvas }) => h("section", {},
        h("h3", {}, t(spec.title)), h("div", { class: "chart-box" }, canvas)))),
      shown.samples.length ? samplesTable(shown.samples, shown.samples_after_step) : null,
    ].filter(Boolean));
    panel.hidden = false;
    redraw();
  }

  function redraw() {
    if (panel.hidden) return;
    for (const { spec, canvas } of canvases) {
      const series = { train: shown.rewards[spec.train], val: shown.rewards[spec.val] };
      drawLossChart(canvas, series, spec.labels);
      canvas.dataset.points = String(series.train.length + series.val.length);
    }
  }

  return {
    show(body) { shown = body; render(); },
    relabel: render, // a new language: titles, headers and axis labels again
    redraw,
  };
}

// An untrained model often answers blanks: say so rather than show an empty-looking cell.
function shownText(value) {
  if (value === null || value === undefined) return "—"; // no evaluation after the first yet
  if (!value) return t("chat.emptyAnswer");
  return value.trim() ? value : t("rw.blank");
}

function samplesTable(samples, afterStep) {
  const after = afterStep === null || afterStep === undefined ? t("rw.after") : t("rw.afterStep", { step: fmtNumber(afterStep) });
  // Only the model's own text is marked as data (the UI's words about it, like "only whitespace", are not).
  const text = (value) => h("td", { class: value && value.trim() ? "sample-text" : undefined, style: TEXT_CELL }, shownText(value));
  const reward = (value) => h("td", { class: "num" }, fmtNumber(value ?? undefined));
  return h("section", { "data-testid": "reward-samples" },
    h("h3", {}, t("rw.samples")),
    h("p", { class: "hint" }, t("rw.samplesHint")),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, t("rw.prompt")), h("th", {}, t("rw.before")), h("th", { class: "num" }, t("rw.rewardCol")),
        h("th", {}, after), h("th", { class: "num" }, t("rw.rewardCol")))),
      h("tbody", {}, samples.map((s) => h("tr", { "data-testid": "reward-sample" },
        text(s.prompt), text(s.before), reward(s.before_reward), text(s.after), reward(s.after_reward)))))));
}
