// The dashboard: registry tables (models with LoRA adapters under their base, runs, datasets, evaluations),
// the models being served (adapters under their base), a run's loss curve (and a reward-tuned run's reward
// curves and before/after answers, rewards.js), a model's detail panel (lineage, latest evaluation,
// report link, compression table), and the hyper-parameter studies with the chosen one's panel (studies.js).
import { drawLossChart } from "./chart.js";
import { fmtBytes, fmtCount, fmtDate, fmtNumber, t, term } from "./i18n.js";
import { api, authHeaders, errorMessage, h, reach } from "./lib.js";
import { adapterBase, groupByParent } from "./models.js";
import { initRewards } from "./rewards.js";
import { initStudies, trialsDone } from "./studies.js";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const HEADLINE = ["perplexity", "accuracy", "macro_f1", "bits_per_byte", "decode_tokens_per_s", "exact_match", "rougeL"];
// A run's figure at validation: what its tuning aimed at first (DPO/ORPO: pairs ranked right; GRPO: reward;
// KTO: the margin), the loss otherwise (a DPO loss says less than how often the chosen answer wins).
const RUN_HEADLINE = ["val_reward_accuracy", "val_reward", "val_reward_margin", "val_loss"];

function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/** Fill a <table> from column specs [{title, value(record) -> string|Node, numeric?}]; `tree` lists records
 * as groupByParent does (an adapter's row indented under its base's, with the base named in its title). */
function fillTable(table, columns, records, { onPick, empty, tree } = {}) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.numeric ? "num" : "" }, c.title))));
  const listed = tree ? tree(records) : records.map((item) => ({ item, depth: 0, parent: null }));
  const rows = listed.map(({ item: record, depth, parent }) => {
    const tr = h("tr", { "data-id": record.id, "data-ref": record.ref, "data-parent": parent || undefined,
      class: depth ? "child" : undefined, title: parent ? t("dash.adapterOf", { base: parent }) : undefined },
    columns.map((c) => h("td", { class: c.numeric ? "num" : "" }, c.value(record))));
    if (onPick) {
      tr.classList.add("pickable");
      tr.tabIndex = 0;
      tr.addEventListener("click", () => onPick(record, tr));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onPick(record, tr); } });
    }
    return tr;
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty || t("dash.nothing"))));
  table.replaceChildren(head, h("tbody", {}, rows));
}

function select(table, tr) {
  table.querySelectorAll("tr.selected").forEach((row) => row.classList.remove("selected"));
  if (tr) tr.classList.add("selected");
}

// A run's state as the registry reads it (running, finished, stopped, failed, pruned, died); a run recorded before
// runs kept one is finished when it has a summary, otherwise it cannot be told from one that stopped.
function runStatus(run) {
  if (run.state) return t(`state.${run.state}`);
  return t(num(run.metrics.steps) !== undefined || run.metrics.states ? "status.finished" : "status.running");
}

function parameterCount(model) {
  return num(model.params.parameters) ?? num(model.metrics.parameters) ?? num(model.metrics.total_parameters);
}

function headline(metrics, keys = HEADLINE) {
  const key = keys.find((k) => num(metrics[k]) !== undefined);
  return key ? t("dash.headline", { metric: term(key), value: fmtNumber(metrics[key]) }) : "—";
}

// An audit's headline: how many groups (bias) or probes (privacy) it flagged.
function auditVerdict(metrics) {
  const flagged = metrics.flagged_groups ?? metrics.flagged_probes;
  if (flagged === undefined) return "—";
  const what = metrics.flagged_groups !== undefined ? "group" : "probe";
  if (!flagged) return t("audit.nothing");
  return flagged === 1 ? t(`audit.${what}`) : t(`audit.${what}s`, { n: fmtNumber(flagged) });
}

// A report is someone's HTML: it must not run in the UI's origin, where the API key is stored. Opened
// directly, the server sends it with `Content-Security-Policy: sandbox`; fetched with the key, it is
// shown in a sandboxed iframe (an opaque origin of its own, no scripts) inside a page of its own.
function sandboxedPage(html) {
  const attr = html.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  return "<!doctype html><meta charset=\"utf-8\"><title>llmkit report</title>"
    + "<style>html,body{margin:0;height:100%}iframe{display:block;border:0;width:100%;height:100%}</style>"
    + `<iframe sandbox="" data-testid="report-frame" srcdoc="${attr}"></iframe>`;
}

function reportLink(evalRecord) {
  const href = `/api/evals/${enc(evalRecord.id)}/report`;
  return h("a", { href, target: "_blank", rel: "noopener", "data-testid": "eval-report-link", onclick: (event) => {
    // A new tab cannot send the Bearer key: with a key set, fetch the report and open it sandboxed.
    const headers = authHeaders();
    if (!headers.Authorization) return;
    event.preventDefault();
    const tab = window.open("", "_blank");
    reach(href, { headers })
      .then(async (response) => {
        if (!response.ok) throw new Error(await errorMessage(response));
        const page = new Blob([sandboxedPage(await response.text())], { type: "text/html" });
        const url = URL.createObjectURL(page);
        if (tab) tab.location = url; else location.assign(url);
      })
      .catch((err) => { if (tab) tab.close(); alert(t("dash.reportFailed", { error: err.message })); });
  } }, t("dash.report"));
}

export function initDashboard() {
  let loaded = false;
  let chartData = null;
  let chartRun = null; // the ref of the run whose curve is drawn
  const chart = $("loss-chart");
  const rewards = initRewards($("run-rewards"));
  const studies = initStudies($("study-detail"), { onRun: (ref) => { showRun(ref); chart.scrollIntoView({ block: "nearest" }); } });

  function banner(message) {
    $("dash-banner").hidden = !message;
    $("dash-banner").textContent = message || "";
  }

  async function load() {
    let overview;
    try {
      overview = await api("/api/overview");
      banner("");
    } catch (err) {
      banner(t("dash.registryFailed", { error: err.message }));
      return;
    }
    loadServed(); // its own banner line: the registry tables do not wait for it
    loadStudies();
    fillTable($("models-table"), [
      { title: t("col.model"), value: (m) => m.ref },
      { title: t("col.kind"), value: (m) => (m.kind ? term(m.kind) : "—") },
      { title: t("col.parameters"), value: (m) => fmtCount(parameterCount(m)), numeric: true },
      { title: t("col.size"), value: (m) => fmtBytes(m.size_bytes ?? undefined), numeric: true },
      { title: t("col.created"), value: (m) => fmtDate(m.created) },
    ], overview.models, { onPick: (m, tr) => { select($("models-table"), tr); showModel(m.id); }, empty: t("dash.noModels"),
      tree: (models) => groupByParent(models, (m) => m.ref, adapterBase) });

    fillTable($("runs-table"), [
      { title: t("col.run"), value: (r) => r.ref },
      { title: t("col.kind"), value: (r) => (r.kind ? term(r.kind) : "—") },
      { title: t("col.status"), value: runStatus },
      { title: t("col.steps"), value: (r) => fmtNumber(num(r.metrics.steps)), numeric: true },
      { title: t("col.val"), value: (r) => headline(r.metrics, RUN_HEADLINE), numeric: true },
      { title: t("col.created"), value: (r) => fmtDate(r.created) },
    ], overview.runs, { onPick: (r, tr) => { select($("runs-table"), tr); if (r.kind === "study") studies.show(r.id); else showRun(r.id); },
      empty: t("dash.noRuns") });

    fillTable($("datasets-table"), [
      { title: t("col.dataset"), value: (d) => d.ref },
      { title: t("col.task"), value: (d) => (d.kind ? term(d.kind) : "—") },
      { title: t("col.records"), value: (d) => fmtNumber(num(d.metrics.records)), numeric: true },
      { title: t("col.tokens"), value: (d) => fmtCount(num(d.metrics.tokens)), numeric: true },
      { title: t("col.created"), value: (d) => fmtDate(d.created) },
    ], overview.datasets, { empty: t("dash.noDatasets") });

    fillTable($("evals-table"), [
      { title: t("col.eval"), value: (e) => e.ref },
      { title: t("col.kind"), value: (e) => (e.kind ? term(e.kind) : "—") },
      { title: t("col.model"), value: (e) => e.params.model || "—" },
      { title: t("col.result"), value: (e) => headline(e.metrics) },
      { title: "", value: (e) => reportLink(e) },
    ], overview.evals, { empty: t("dash.noEvals") });
  }

  // A table whose data could not be read: one row saying why.
  function tableError(table, text) {
    table.replaceChildren(h("tbody", {}, h("tr", {}, h("td", { class: "empty error-text" }, text))));
  }

  // What the server answers for now (GET /v1/models): an adapter served on a base carries "parent".
  async function loadServed() {
    let cards;
    try {
      cards = (await api("/v1/models")).data || [];
    } catch (err) {
      tableError($("served-table"), t("dash.servedFailed", { error: err.message }));
      return;
    }
    fillTable($("served-table"), [
      { title: t("col.model"), value: (c) => c.id },
      { title: t("col.kind"), value: (c) => t(`kind.${c.kind || "model"}`) },
      { title: t("col.backend"), value: (c) => c.backend || "—" },
      { title: t("col.context"), value: (c) => fmtNumber(num(c.context_length)), numeric: true },
    ], cards, { empty: t("dash.noModels"), tree: (list) => groupByParent(list) });
  }

  // Studies made by `llmkit tune` (GET /api/studies: their trial counts follow a study still running).
  async function loadStudies() {
    let list;
    try {
      list = (await api("/api/studies")).studies;
    } catch (err) {
      tableError($("studies-table"), t("dash.studiesFailed", { error: err.message }));
      return;
    }
    fillTable($("studies-table"), [
      { title: t("col.study"), value: (s) => s.ref },
      { title: t("st.stage"), value: (s) => s.stage || "—" },
      { title: t("st.metric"), value: (s) => s.metric || "—" },
      { title: t("st.trials"), value: (s) => trialsDone(s), numeric: true },
      { title: t("col.best"), value: (s) => fmtNumber(s.best ? s.best.value ?? undefined : undefined), numeric: true },
      { title: t("col.status"), value: (s) => t(s.finished ? "status.finished" : "status.running") },
      { title: t("col.created"), value: (s) => fmtDate(s.created) },
    ], list, { onPick: (s, tr) => { select($("studies-table"), tr); studies.show(s.id); }, empty: t("dash.noStudies") });
  }

  // -- loss curve ----------------------------------------------------------------------------------
  async function showRun(ref) {
    $("chart-title").textContent = t("dash.lossLoading");
    try {
      const body = await api(`/api/runs/${enc(ref)}/metrics`);
      chartData = { train: body.train, val: body.val };
      chartRun = body.run.ref;
      $("chart-title").textContent = t("dash.lossOf", { run: chartRun });
      redraw();
      rewards.show(body);
    } catch (err) {
      chartData = null;
      chartRun = null;
      rewards.show(null);
      $("chart-title").textContent = t("dash.lossCurve");
      $("chart-empty").hidden = false;
      $("chart-empty").textContent = err.message;
    }
  }

  function redraw() {
    if (!chartData) return;
    const drawn = drawLossChart(chart, chartData);
    chart.dataset.points = String(chartData.train.length + chartData.val.length);
    $("chart-empty").hidden = drawn;
    $("chart-empty").textContent = drawn ? "" : t("dash.noPoints");
  }
  window.addEventListener("resize", () => requestAnimationFrame(() => { redraw(); rewards.redraw(); }));

  // -- model detail --------------------------------------------------------------------------------
  async function showModel(ref) {
    shownModel = ref;
    const panel = $("model-detail");
    panel.hidden = false;
    panel.replaceChildren(h("p", { class: "hint" }, t("dash.loading")));
    let detail;
    try {
      detail = await api(`/api/models/${enc(ref)}`);
    } catch (err) {
      panel.replaceChildren(h("p", { class: "error-text", role: "alert" }, err.message));
      return;
    }
    const m = detail.record;
    const latest = detail.evals[0];
    panel.replaceChildren(...[
      h("div", { class: "detail-head" },
        h("h2", {}, m.ref),
        h("button", { type: "button", class: "secondary small", onclick: () => { panel.hidden = true; } }, t("dash.close"))),
      h("dl", { class: "facts" },
        fact("kind", m.kind ? term(m.kind) : "—"), fact("parameters", fmtCount(parameterCount(m))),
        fact("size", fmtBytes(m.size_bytes ?? undefined)), fact("created", fmtDate(m.created)),
        fact("id", m.id), fact("path", m.path || "—")),
      adapterBase(m) ? h("p", { class: "hint", "data-testid": "adapter-of" }, t("dash.adapterOf", { base: adapterBase(m) })) : null,
      h("div", { class: "detail-grid" },
        h("section", {}, h("h3", {}, t("dash.parents")), lineageList(detail.parents, t("dash.noParents"))),
        h("section", {}, h("h3", {}, t("dash.children")), lineageList(detail.children, t("dash.noChildren")))),
      h("section", {}, h("h3", {}, t("dash.latestEval")), latest ? evalSummary(latest) : h("p", { class: "hint" },
        t("dash.notEvaluated", { command: `llmkit eval ${m.name}` }))),
      detail.evals.length > 1 ? h("section", {}, h("h3", {}, t("dash.allEvals")), h("ul", { class: "plain" },
        detail.evals.map((e) => listed([term(e.kind), headline(e.metrics), fmtDate(e.created)], reportLink(e))))) : null,
      detail.audits.length ? h("section", { "data-testid": "audits" }, h("h3", {}, t("dash.audits")), h("ul", { class: "plain" },
        detail.audits.map((a) => listed([a.kind, auditVerdict(a.metrics), fmtDate(a.created)], reportLink(a))))) : null,
      ...detail.compression.map(compressionTable),
    ].filter(Boolean));
    panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function fact(name, value) {
    return h("div", {}, h("dt", {}, t(`fact.${name}`)), h("dd", {}, value));
  }

  // "a · b · c report": each part its own element, so each reads as one string of the UI or of the data.
  function listed(parts, link) {
    const out = [];
    parts.forEach((part, i) => { if (i) out.push(" · "); out.push(h("span", {}, part)); });
    return h("li", {}, ...out, " ", link);
  }

  function lineageList(links, empty) {
    if (!links.length) return h("p", { class: "hint" }, empty);
    return h("ul", { class: "plain lineage" }, links.map(({ relation, record }) => {
      const target = record.type === "model" ? () => showModel(record.id)
        : record.type === "run" ? () => { showRun(record.id); chart.scrollIntoView({ block: "nearest" }); }
          : null;
      const name = target ? h("button", { type: "button", class: "link", onclick: target }, record.ref) : h("span", {}, record.ref);
      return h("li", {}, h("span", { class: "relation" }, term(relation)), " ", name,
        h("span", { class: "type" }, term(record.type)));
    }));
  }

  function evalSummary(e) {
    const metrics = Object.entries(e.metrics).filter(([, v]) => num(v) !== undefined);
    return h("div", { "data-testid": "latest-eval" },
      h("p", {}, h("span", {}, !e.params.dataset ? term(e.kind) : t(e.params.split ? "dash.evalOnSplit" : "dash.evalOn",
        { kind: term(e.kind), dataset: e.params.dataset, split: e.params.split })), " · ", h("span", {}, fmtDate(e.created)), " · ",
      reportLink(e)),
      h("div", { class: "table-wrap" }, h("table", { class: "metrics" }, h("tbody", {},
        metrics.slice(0, 14).map(([k, v]) => h("tr", {}, h("th", {}, term(k)), h("td", { class: "num" }, fmtNumber(v, k.endsWith("per_s") ? 1 : 4))))))));
  }

  function compressionTable(table) {
    const keys = ["size_mb", "perplexity", "accuracy", "decode_tokens_per_s"].filter((k) => table.rows.some((r) => num(r[k]) !== undefined));
    return h("section", { "data-testid": "compression-table" },
      h("h3", {}, t("dash.beforeAfter", { relation: term(table.relation) })),
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, t("dash.stage")), h("th", {}, t("col.model")),
          keys.map((k) => h("th", { class: "num" }, term(k))))),
        h("tbody", {}, table.rows.map((r) => h("tr", {}, h("td", {}, term(r.stage)), h("td", {}, r.model),
          keys.map((k) => h("td", { class: "num" }, fmtNumber(num(r[k] ?? undefined))))))))));
  }

  $("dash-refresh").addEventListener("click", load);
  // A new language: redraw what this view built (tables, chart labels, the open model's panel).
  let shownModel = null;
  document.addEventListener("llmkit:locale", () => {
    if (!loaded) return;
    load();
    $("chart-title").textContent = chartRun ? t("dash.lossOf", { run: chartRun }) : t("dash.lossCurve");
    if (chartData) redraw();
    rewards.relabel();
    studies.relabel();
    if (shownModel && !$("model-detail").hidden) showModel(shownModel);
  });
  return {
    shown: () => {
      if (!loaded) { loaded = true; load(); }
      requestAnimationFrame(() => { redraw(); rewards.redraw(); }); // the canvases had no size while the view was hidden
    },
    reload: () => { if (loaded) load(); },
  };
}
