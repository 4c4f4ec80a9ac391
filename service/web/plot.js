// Plots drawn as SVG by hand: per-epoch line charts, a confusion matrix, accuracy bars.
import { el, svgEl, fmtNumber, pct } from "./ui.js";

const PALETTE = ["#4f46e5", "#0d9488", "#d97706", "#db2777"];

function niceTicks(min, max, count = 4) {
  if (min === max) { const pad = Math.abs(min) * 0.1 || 1; min -= pad; max += pad; }
  const span = max - min;
  const step0 = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => span / s <= count + 0.5);
  const start = Math.floor(min / step) * step;
  const end = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = start; v <= end + step / 2; v += step) ticks.push(Number(v.toFixed(10)));
  return ticks;
}

// series: [{name, points: [[x, y], ...]}]; x are epochs (integers).
export function lineChart(series, { title, percent = false, yMin, yMax, xLabel = "epoch" } = {}) {
  const width = 360;
  const height = 200;
  const margin = { top: 12, right: 14, bottom: 28, left: 44 };
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => Number.isFinite(y));
  // one epoch: centre its point instead of pinning it to the left edge
  const single = Math.min(...xs) === Math.max(...xs);
  const xMin = single ? xs[0] - 0.5 : Math.min(...xs);
  const xMax = single ? xs[0] + 0.5 : Math.max(...xs);
  const yTicks = niceTicks(yMin ?? Math.min(...ys), yMax ?? Math.max(...ys));
  const y0 = yTicks[0];
  const y1 = yTicks[yTicks.length - 1];
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const sx = (x) => margin.left + ((x - xMin) / (xMax - xMin)) * plotW;
  const sy = (y) => margin.top + (1 - (y - y0) / (y1 - y0)) * plotH;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  for (const tick of yTicks) {
    svg.append(svgEl("line", { x1: margin.left, x2: width - margin.right, y1: sy(tick), y2: sy(tick), class: "grid" }),
      svgEl("text", { x: margin.left - 6, y: sy(tick) + 3.5, class: "tick", "text-anchor": "end" },
        percent ? `${Math.round(tick * 100)}%` : fmtNumber(tick, 2)));
  }
  const xStep = Math.max(1, Math.ceil((xMax - xMin) / 6));
  for (let x = Math.ceil(xMin); x <= Math.floor(xMax); x += xStep) {
    svg.append(svgEl("text", { x: sx(x), y: height - margin.bottom + 16, class: "tick", "text-anchor": "middle" }, x));
  }
  svg.append(svgEl("text", { x: width - margin.right, y: height - 2, class: "axis-label", "text-anchor": "end" }, xLabel));
  series.forEach((s, index) => {
    const colour = s.colour || PALETTE[index % PALETTE.length];
    const points = s.points.filter((p) => Number.isFinite(p[1]));
    if (points.length > 1) {
      svg.append(svgEl("polyline", { points: points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none",
        stroke: colour, "stroke-width": 2, "stroke-linejoin": "round", "stroke-dasharray": s.dashed ? "5 4" : null }));
    }
    for (const p of points.length <= 40 ? points : []) {
      svg.append(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3.2, fill: colour },
        svgEl("title", {}, `${s.name}, ${xLabel} ${p[0]}: ${percent ? pct(p[1]) : fmtNumber(p[1], 4)}`)));
    }
  });
  const legend = el("div", { class: "legend" }, series.map((s, index) => el("span", {},
    el("i", { style: `background:${s.colour || PALETTE[index % PALETTE.length]}` }), s.name)));
  return el("figure", { class: "chart-figure" }, el("figcaption", {}, title), svg, legend);
}

// Rows: actual class, columns: predicted class. Cells coloured by the share of their row.
export function confusionMatrix(matrix, classes) {
  const n = classes.length;
  const grid = el("div", { class: "confusion", style: `grid-template-columns: auto repeat(${n}, minmax(2.4rem, 1fr))`,
    role: "table", "aria-label": "confusion matrix" });
  grid.append(el("div", { class: "corner" }, el("span", {}, "actual ↓ / predicted →")));
  for (const name of classes) grid.append(el("div", { class: "col-head", title: name }, name));
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    grid.append(el("div", { class: "row-head", title: classes[i] }, classes[i]));
    row.forEach((count, j) => {
      const share = count / total;
      const hue = i === j ? "79, 70, 229" : "219, 39, 119";
      const style = `background: rgba(${hue}, ${0.08 + 0.85 * share}); color: ${share > 0.55 ? "#fff" : "inherit"}`;
      grid.append(el("div", { class: `cell${i === j ? " diag" : ""}`, style, role: "cell",
        title: `actual ${classes[i]}, predicted ${classes[j]}: ${count} (${pct(share, 0)} of the row)` }, count));
    });
  });
  return el("figure", { class: "chart-figure" }, el("figcaption", {}, "Confusion matrix (validation, best epoch)"), grid);
}

export function accuracyBars(perClass) {
  return bars("Per-class accuracy", perClass, (value) => pct(value, 0));
}

// One bar per name for values in [0, 1] (null: no bar, shown as "–"); `flagged` names stand out.
export function bars(caption, values, format, flagged = []) {
  return el("figure", { class: "chart-figure" }, el("figcaption", {}, caption),
    el("ul", { class: "bars" }, Object.entries(values || {}).map(([name, value]) => el("li", { class: flagged.includes(name) ? "flagged" : null },
      el("span", { class: "bar-label", title: name }, name),
      el("span", { class: "bar-track" }, el("span", { class: "bar-fill", style: `width:${Math.max(0, Math.min(1, value ?? 0)) * 100}%` })),
      el("span", { class: "bar-value" }, value === null || value === undefined ? "–" : format(value))))));
}
