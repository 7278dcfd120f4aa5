// A line chart drawn by hand on a <canvas>: train and val lines, ticks, axis labels and a legend. The loss
// curve by default; a run's reward curves pass their own labels (message keys, read at each draw so a new
// language redraws them).
import { getLocale, t } from "./i18n.js";

const COLORS = { train: "#2563eb", val: "#ea580c", grid: "#e5e7eb", axis: "#6b7280", text: "#374151" };
const PAD = { left: 58, right: 22, top: 28, bottom: 42 };

/** About `count` round tick values covering [min, max]. */
function ticks(min, max, count) {
  if (max <= min) return [min];
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function label(v) {
  if (Math.abs(v) >= 1000) return v.toLocaleString(getLocale(), { maximumFractionDigits: 0 });
  return (+v.toPrecision(4)).toLocaleString(getLocale(), { maximumFractionDigits: 4 });
}

const LOSS_LABELS = { y: "chart.loss", train: "chart.train", val: "chart.val" };

/** Draw series {train: [{step, value}], val: [...]} to fill the canvas's CSS box; `labels` holds the message
 * keys of the y axis and of each series' legend entry. */
export function drawLossChart(canvas, series, labels = LOSS_LABELS) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 300;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const points = [...series.train, ...series.val];
  if (!points.length) return false;
  let [x0, x1] = [Math.min(...points.map((p) => p.step)), Math.max(...points.map((p) => p.step))];
  let [y0, y1] = [Math.min(...points.map((p) => p.value)), Math.max(...points.map((p) => p.value))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const span = y1 - y0 || Math.abs(y1) * 0.1 || 1;
  y0 -= span * 0.05;
  y1 += span * 0.05;

  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const x = (step) => PAD.left + ((step - x0) / (x1 - x0)) * plotW;
  const y = (value) => PAD.top + (1 - (value - y0) / (y1 - y0)) * plotH;

  // grid and tick labels
  ctx.font = "12px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.fillStyle = COLORS.text;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of ticks(y0, y1, 5)) {
    ctx.strokeStyle = COLORS.grid;
    ctx.beginPath();
    ctx.moveTo(PAD.left, y(v));
    ctx.lineTo(PAD.left + plotW, y(v));
    ctx.stroke();
    ctx.fillText(label(v), PAD.left - 6, y(v));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const v of ticks(x0, x1, Math.max(2, Math.floor(plotW / 80))).filter(Number.isInteger)) {
    ctx.strokeStyle = COLORS.grid;
    ctx.beginPath();
    ctx.moveTo(x(v), PAD.top);
    ctx.lineTo(x(v), PAD.top + plotH);
    ctx.stroke();
    ctx.fillText(label(v), x(v), PAD.top + plotH + 6);
  }

  // axes and their labels
  ctx.strokeStyle = COLORS.axis;
  ctx.beginPath();
  ctx.moveTo(PAD.left, PAD.top);
  ctx.lineTo(PAD.left, PAD.top + plotH);
  ctx.lineTo(PAD.left + plotW, PAD.top + plotH);
  ctx.stroke();
  ctx.fillText(t("chart.step"), PAD.left + plotW / 2, height - 16);
  ctx.save();
  ctx.translate(14, PAD.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "middle";
  ctx.fillText(t(labels.y), 0, 0);
  ctx.restore();

  // the lines: train thin, val thicker with a dot per evaluation
  const line = (pts, color, widthPx, dots) => {
    if (!pts.length) return;
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = widthPx;
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(x(p.step), y(p.value)) : ctx.moveTo(x(p.step), y(p.value))));
    ctx.stroke();
    if (dots) {
      for (const p of pts) {
        ctx.beginPath();
        ctx.arc(x(p.step), y(p.value), 3.5, 0, Math.PI * 2);
        ctx.fill();
      }
    }
  };
  line(series.train, COLORS.train, 1.5, series.train.length === 1);
  line(series.val, COLORS.val, 2, true);

  // legend, top right
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  const entries = [["train", COLORS.train], ["val", COLORS.val]].filter(([name]) => series[name].length);
  const widths = entries.map(([name]) => 22 + ctx.measureText(t(labels[name])).width + 14);
  let lx = Math.max(4, PAD.left + plotW - widths.reduce((a, b) => a + b, 0)); // on a phone: from the left edge
  entries.forEach(([name, color], i) => {
    ctx.fillStyle = color;
    ctx.fillRect(lx, 10, 16, 3);
    ctx.fillStyle = COLORS.text;
    ctx.fillText(t(labels[name]), lx + 22, 12);
    lx += widths[i];
  });
  return true;
}
