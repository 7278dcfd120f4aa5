// A hyper-parameter study's panel on the dashboard (`llmkit tune`): what was searched, how many trials ended
// each way, the best trials as a table and the study's report plots. Built from GET /api/studies/{ref}; the
// plots are fetched with the API key (an <img src> cannot send it) and shown from blob URLs.
import { fmtDate, fmtNumber, getLocale, t } from "./i18n.js";
import { authHeaders, errorMessage, h, reach } from "./lib.js";

const enc = encodeURIComponent;
export const STATES = ["complete", "pruned", "fail", "running", "stopped_by_budget"];

/** A drawn value: a float with three significant digits (learning rates are small), never in e-notation. */
export function fmtParam(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "—" : String(value);
  if (Number.isInteger(value)) return fmtNumber(value);
  return value.toLocaleString(getLocale(), { maximumSignificantDigits: 3, useGrouping: false });
}

/** "2 of 3" trials finished (complete, pruned or failed) of those asked for. */
export function trialsDone(study) {
  const done = study.states.complete + study.states.pruned + study.states.fail;
  return study.planned ? t("st.trialsOf", { done: fmtNumber(done), planned: fmtNumber(study.planned) }) : fmtNumber(done);
}

export function initStudies(panel, { onRun } = {}) {
  let shown = null;         // the StudyDetail on display
  let ref = null;           // what was asked for (a click on a row: the study's id)
  const images = new Map(); // plot URL -> blob URL of the fetched PNG

  function forget() {
    for (const url of images.values()) URL.revokeObjectURL(url);
    images.clear();
  }

  async function show(studyRef) {
    if (studyRef !== ref) { forget(); shown = null; }
    ref = studyRef;
    panel.hidden = false;
    panel.replaceChildren(h("p", { class: "hint" }, t("dash.loading")));
    try {
      const response = await reach(`/api/studies/${enc(studyRef)}`, { headers: authHeaders() });
      if (!response.ok) throw new Error(await errorMessage(response));
      shown = await response.json();
    } catch (err) {
      panel.replaceChildren(h("p", { class: "error-text", role: "alert" }, err.message));
      return;
    }
    render();
    panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function render() {
    if (!shown || panel.hidden) return;
    const s = shown;
    panel.replaceChildren(...[
      h("div", { class: "detail-head" },
        h("h2", { id: "study-title" }, t("st.title", { study: s.ref })),
        h("button", { type: "button", class: "secondary small", onclick: () => { panel.hidden = true; } }, t("dash.close"))),
      h("dl", { class: "facts" },
        fact(t("st.stage"), s.stage || "—"), fact(t("st.data"), s.data || "—"),
        fact(t("st.metric"), s.metric ? h("span", {}, h("span", {}, s.metric), " · ", h("span", {}, t(`st.${s.direction}`))) : "—"),
        fact(t("st.trials"), trialsDone(s)), fact(t("st.status"), t(s.finished ? "status.finished" : "status.running")),
        fact(t("col.created"), fmtDate(s.created))),
      h("section", {}, h("h3", {}, t("st.states")),
        h("dl", { class: "facts states", "data-testid": "study-states" }, STATES.map((state) =>
          h("div", { "data-state": state }, h("dt", {}, t(`st.state.${state}`)), h("dd", {}, fmtNumber(s.states[state])))))),
      h("p", { "data-testid": "study-best" }, s.best
        ? t("st.best", { trial: fmtNumber(s.best.trial), metric: s.metric, value: fmtNumber(s.best.value ?? undefined) })
        : t(s.finished ? "st.noneCompleted" : "st.noBest"),
      s.best && s.best.model ? [" · ", h("span", {}, t("st.bestModel", { model: s.best.model }))] : null),
      // a finished study with no completed trial: no "yet" (it is over) and no table or plots to wait for
      s.rows.length || !s.finished ? h("section", {}, h("h3", {}, t("st.bestTrials")), s.rows.length ? trialsTable(s)
        : h("p", { class: "hint" }, t("st.noBest"))) : null,
      h("section", {}, h("h3", {}, t("st.plots")), s.plots.length
        ? h("div", { class: "study-plots" }, s.plots.map(plot))
        : h("p", { class: "hint", "data-testid": "study-no-plots" }, t(s.finished ? "st.noPlotsFinished" : "st.noPlots"))),
    ].filter(Boolean));
  }

  function trialsTable(s) {
    const runCell = (row) => {
      if (!row.run) return h("td", {}, "—");
      return h("td", {}, onRun ? h("button", { type: "button", class: "link", onclick: () => onRun(row.run) }, row.run) : row.run);
    };
    return h("div", { class: "table-wrap" }, h("table", { "data-testid": "study-trials" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, t("st.trial")), h("th", { class: "num" }, s.metric || "—"),
        s.params.map((name) => h("th", { class: "num" }, name)), h("th", { class: "num" }, t("st.seconds")), h("th", {}, t("col.run")))),
      h("tbody", {}, s.rows.map((row) => h("tr", { "data-testid": "study-trial", "data-trial": row.trial },
        h("td", { class: "num" }, fmtNumber(row.trial)), h("td", { class: "num" }, fmtNumber(row.value ?? undefined)),
        s.params.map((name) => h("td", { class: "num" }, fmtParam(row.params[name]))),
        h("td", { class: "num" }, fmtNumber(row.seconds ?? undefined, 1)), runCell(row))))));
  }

  function plot({ name, url }) {
    const img = h("img", { alt: t(`st.alt.${name}`), "data-testid": "study-plot", "data-name": name, loading: "lazy" });
    const figure = h("figure", { class: "study-plot" }, img, h("figcaption", {}, t(`st.plot.${name}`)));
    const ready = images.get(url);
    if (ready) {
      img.src = ready;
      return figure;
    }
    reach(url, { headers: authHeaders() })
      .then(async (response) => {
        if (!response.ok) throw new Error(await errorMessage(response));
        const blob = URL.createObjectURL(await response.blob());
        images.set(url, blob);
        img.src = blob;
      })
      .catch((err) => figure.replaceChildren(h("p", { class: "error-text" }, t("st.plotFailed", { error: err.message }))));
    return figure;
  }

  return {
    show,
    relabel: render, // a new language: every string again (the fetched pictures are kept)
  };
}

function fact(name, value) {
  return h("div", {}, h("dt", {}, name), h("dd", {}, value));
}
