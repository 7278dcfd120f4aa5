// The dashboard: registry tables (models, runs, datasets, evaluations), a run's loss curve, and a
// model's detail panel (lineage, latest evaluation, report link, compression table).
import { drawLossChart } from "./chart.js";
import { api, authHeaders, errorMessage, fmtBytes, fmtCount, fmtDate, fmtNumber, h } from "./lib.js";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const HEADLINE = ["perplexity", "accuracy", "macro_f1", "bits_per_byte", "decode_tokens_per_s", "exact_match", "rougeL"];

function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/** Fill a <table> from column specs [{title, value(record) -> string|Node, numeric?}]. */
function fillTable(table, columns, records, { onPick, empty } = {}) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.numeric ? "num" : "" }, c.title))));
  const rows = records.map((record) => {
    const tr = h("tr", { "data-id": record.id, "data-ref": record.ref },
      columns.map((c) => h("td", { class: c.numeric ? "num" : "" }, c.value(record))));
    if (onPick) {
      tr.classList.add("pickable");
      tr.tabIndex = 0;
      tr.addEventListener("click", () => onPick(record, tr));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onPick(record, tr); } });
    }
    return tr;
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty || "nothing yet")));
  table.replaceChildren(head, h("tbody", {}, rows));
}

function select(table, tr) {
  table.querySelectorAll("tr.selected").forEach((row) => row.classList.remove("selected"));
  if (tr) tr.classList.add("selected");
}

function parameterCount(model) {
  return num(model.params.parameters) ?? num(model.metrics.parameters) ?? num(model.metrics.total_parameters);
}

function headline(metrics) {
  const key = HEADLINE.find((k) => num(metrics[k]) !== undefined);
  return key ? `${key} ${fmtNumber(metrics[key])}` : "—";
}

// An audit's headline: how many groups (bias) or probes (privacy) it flagged.
function auditVerdict(metrics) {
  const flagged = metrics.flagged_groups ?? metrics.flagged_probes;
  if (flagged === undefined) return "—";
  const what = metrics.flagged_groups !== undefined ? "group" : "probe";
  return flagged ? `${flagged} ${what}${flagged === 1 ? "" : "s"} flagged` : "nothing flagged";
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
    fetch(href, { headers })
      .then(async (response) => {
        if (!response.ok) throw new Error(await errorMessage(response));
        const page = new Blob([sandboxedPage(await response.text())], { type: "text/html" });
        const url = URL.createObjectURL(page);
        if (tab) tab.location = url; else location.assign(url);
      })
      .catch((err) => { if (tab) tab.close(); alert(`Could not open the report: ${err.message}`); });
  } }, "report");
}

export function initDashboard() {
  let loaded = false;
  let chartData = null;
  const chart = $("loss-chart");

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
      banner(`Could not read the registry: ${err.message}`);
      return;
    }
    fillTable($("models-table"), [
      { title: "Model", value: (m) => m.ref },
      { title: "Kind", value: (m) => m.kind || "—" },
      { title: "Parameters", value: (m) => fmtCount(parameterCount(m)), numeric: true },
      { title: "Size", value: (m) => fmtBytes(m.size_bytes ?? undefined), numeric: true },
      { title: "Created", value: (m) => fmtDate(m.created) },
    ], overview.models, { onPick: (m, tr) => { select($("models-table"), tr); showModel(m.id); }, empty: "no models yet" });

    fillTable($("runs-table"), [
      { title: "Run", value: (r) => r.ref },
      { title: "Kind", value: (r) => r.kind || "—" },
      { title: "Status", value: (r) => (num(r.metrics.steps) !== undefined ? "finished" : "running or stopped") },
      { title: "Steps", value: (r) => fmtNumber(num(r.metrics.steps)), numeric: true },
      { title: "Val loss", value: (r) => fmtNumber(num(r.metrics.val_loss)), numeric: true },
      { title: "Created", value: (r) => fmtDate(r.created) },
    ], overview.runs, { onPick: (r, tr) => { select($("runs-table"), tr); showRun(r.id); }, empty: "no runs yet" });

    fillTable($("datasets-table"), [
      { title: "Dataset", value: (d) => d.ref },
      { title: "Task", value: (d) => d.kind || "—" },
      { title: "Records", value: (d) => fmtNumber(num(d.metrics.records)), numeric: true },
      { title: "Tokens", value: (d) => fmtCount(num(d.metrics.tokens)), numeric: true },
      { title: "Created", value: (d) => fmtDate(d.created) },
    ], overview.datasets, { empty: "no datasets yet" });

    fillTable($("evals-table"), [
      { title: "Evaluation", value: (e) => e.ref },
      { title: "Kind", value: (e) => e.kind || "—" },
      { title: "Model", value: (e) => e.params.model || "—" },
      { title: "Result", value: (e) => headline(e.metrics) },
      { title: "", value: (e) => reportLink(e) },
    ], overview.evals, { empty: "no evaluations yet" });
  }

  // -- loss curve ----------------------------------------------------------------------------------
  async function showRun(ref) {
    $("chart-title").textContent = "Loss curve — loading…";
    try {
      const body = await api(`/api/runs/${enc(ref)}/metrics`);
      chartData = { train: body.train, val: body.val };
      $("chart-title").textContent = `Loss curve — ${body.run.ref}`;
      redraw();
    } catch (err) {
      chartData = null;
      $("chart-title").textContent = "Loss curve";
      $("chart-empty").hidden = false;
      $("chart-empty").textContent = err.message;
    }
  }

  function redraw() {
    if (!chartData) return;
    const drawn = drawLossChart(chart, chartData);
    chart.dataset.points = String(chartData.train.length + chartData.val.length);
    $("chart-empty").hidden = drawn;
    $("chart-empty").textContent = drawn ? "" : "This run has no loss points yet.";
  }
  window.addEventListener("resize", () => requestAnimationFrame(redraw));

  // -- model detail --------------------------------------------------------------------------------
  async function showModel(ref) {
    const panel = $("model-detail");
    panel.hidden = false;
    panel.replaceChildren(h("p", { class: "hint" }, "loading…"));
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
        h("button", { type: "button", class: "secondary small", onclick: () => { panel.hidden = true; } }, "Close")),
      h("dl", { class: "facts" },
        fact("kind", m.kind || "—"), fact("parameters", fmtCount(parameterCount(m))),
        fact("size", fmtBytes(m.size_bytes ?? undefined)), fact("created", fmtDate(m.created)),
        fact("id", m.id), fact("path", m.path || "—")),
      h("div", { class: "detail-grid" },
        h("section", {}, h("h3", {}, "Parents"), lineageList(detail.parents, "no parents")),
        h("section", {}, h("h3", {}, "Children"), lineageList(detail.children, "no children"))),
      h("section", {}, h("h3", {}, "Latest evaluation"), latest ? evalSummary(latest) : h("p", { class: "hint" },
        "Not evaluated yet: llmkit eval " + m.name)),
      detail.evals.length > 1 ? h("section", {}, h("h3", {}, "All evaluations"), h("ul", { class: "plain" },
        detail.evals.map((e) => h("li", {}, `${e.kind} · ${headline(e.metrics)} · ${fmtDate(e.created)} `, reportLink(e))))) : null,
      detail.audits.length ? h("section", { "data-testid": "audits" }, h("h3", {}, "Audits"), h("ul", { class: "plain" },
        detail.audits.map((a) => h("li", {}, `${a.kind} · ${auditVerdict(a.metrics)} · ${fmtDate(a.created)} `, reportLink(a))))) : null,
      ...detail.compression.map(compressionTable),
    ].filter(Boolean));
    panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function fact(name, value) {
    return h("div", {}, h("dt", {}, name), h("dd", {}, value));
  }

  function lineageList(links, empty) {
    if (!links.length) return h("p", { class: "hint" }, empty);
    return h("ul", { class: "plain lineage" }, links.map(({ relation, record }) => {
      const target = record.type === "model" ? () => showModel(record.id)
        : record.type === "run" ? () => { showRun(record.id); chart.scrollIntoView({ block: "nearest" }); }
          : null;
      const name = target ? h("button", { type: "button", class: "link", onclick: target }, record.ref) : h("span", {}, record.ref);
      return h("li", {}, h("span", { class: "relation" }, relation.replaceAll("_", " ")), " ", name,
        h("span", { class: "type" }, record.type));
    }));
  }

  function evalSummary(e) {
    const metrics = Object.entries(e.metrics).filter(([, v]) => num(v) !== undefined);
    return h("div", { "data-testid": "latest-eval" },
      h("p", {}, `${e.kind}${e.params.dataset ? ` on ${e.params.dataset}` : ""}${e.params.split ? ` (${e.params.split})` : ""}, ${fmtDate(e.created)} — `,
        reportLink(e)),
      h("div", { class: "table-wrap" }, h("table", { class: "metrics" }, h("tbody", {},
        metrics.slice(0, 14).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "num" }, fmtNumber(v))))))));
  }

  function compressionTable(table) {
    const keys = ["size_mb", "perplexity", "accuracy", "decode_tokens_per_s"].filter((k) => table.rows.some((r) => num(r[k]) !== undefined));
    return h("section", { "data-testid": "compression-table" },
      h("h3", {}, `Before / after (${table.relation.replaceAll("_", " ")})`),
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "stage"), h("th", {}, "model"), keys.map((k) => h("th", { class: "num" }, k.replaceAll("_", " "))))),
        h("tbody", {}, table.rows.map((r) => h("tr", {}, h("td", {}, r.stage), h("td", {}, r.model),
          keys.map((k) => h("td", { class: "num" }, fmtNumber(num(r[k] ?? undefined))))))))));
  }

  $("dash-refresh").addEventListener("click", load);
  return {
    shown: () => {
      if (!loaded) { loaded = true; load(); }
      requestAnimationFrame(redraw); // the canvas had no size while its view was hidden
    },
    reload: () => { if (loaded) load(); },
  };
}
