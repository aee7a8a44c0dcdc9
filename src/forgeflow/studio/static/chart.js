// Line charts drawn as SVG at the container's pixel width (redrawn on resize), with a hover readout.

import {fmtNum, h, replace, svg} from "./dom.js";

const PAD = {top: 12, right: 16, bottom: 30, left: 56};

/** About `count` round tick values covering [lo, hi] (whole numbers only when `integer`). */
export function niceTicks(lo, hi, count = 5, integer = false) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  if (integer) step = Math.max(1, Math.round(step));
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

/**
 * A chart bound to `host`. series: [{name, points: [{x, y}], tone: "a"|"b"|"c", markers, dashed}].
 * Returns {update(series)}.
 */
/** Labels for ticks `step` apart: as many decimals as the step needs, exponents for tiny or huge values. */
export function tickFormat(ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
  const big = Math.max(...ticks.map(Math.abs));
  if (big >= 1e6 || (step < 1e-3 && big < 1e-2)) {
    const digits = Math.max(1, Math.min(6, Math.ceil(Math.log10(big / step || 1))));
    return (v) => (v === 0 ? "0" : v.toExponential(Math.max(0, digits - 1)));
  }
  let decimals = 0;  // as many as the step needs (0.25 needs two)
  while (decimals < 8 && Math.abs(Math.round(step * 10 ** decimals) - step * 10 ** decimals) > 1e-6) decimals++;
  return (v) => v.toFixed(decimals);
}

export function lineChart(host, {height = 220, xLabel = "", yFormat = fmtNum, xFormat = fmtNum, xInteger = false,
  emptyText = "No data yet"} = {}) {
  let series = [];
  const box = h("div", {class: "chart", style: {height: height + "px"}});
  const legend = h("div", {class: "chart-legend"});
  const tip = h("div", {class: "chart-tip", hidden: true});
  host.append(legend, box);
  box.append(tip);

  function draw() {
    const width = Math.max(240, Math.floor(box.clientWidth || host.clientWidth || 600));
    const pts = series.flatMap((s) => s.points.filter((p) => isFinite(p.y) && isFinite(p.x)));
    replace(legend, series.filter((s) => s.points.length).map((s) =>
      h("span", {class: "legend-item"}, h("i", {class: ["swatch", "tone-" + s.tone, s.dashed && "dashed"]}), s.name,
        s.points.length ? h("b", {}, " " + yFormat(s.points[s.points.length - 1].y)) : null)));
    const old = box.querySelector("svg, .chart-empty");
    if (old) old.remove();
    if (!pts.length) {
      box.prepend(h("div", {class: "chart-empty"}, emptyText));
      return;
    }
    let xmin = Math.min(...pts.map((p) => p.x)), xmax = Math.max(...pts.map((p) => p.x));
    let ymin = Math.min(...pts.map((p) => p.y)), ymax = Math.max(...pts.map((p) => p.y));
    if (xmin === xmax) { xmin = Math.max(0, xmin - 1); xmax += 1; }
    const yt = niceTicks(ymin, ymax, 4);
    ymin = yt[0]; ymax = yt[yt.length - 1];
    const xt = niceTicks(xmin, xmax, Math.max(2, Math.floor(width / 90)), xInteger).filter((v) => v >= xmin && v <= xmax);
    const yLabel = tickFormat(yt), xLabelOf = tickFormat(xt.length > 1 ? xt : [0, 1]);
    const iw = width - PAD.left - PAD.right, ih = height - PAD.top - PAD.bottom;
    const sx = (x) => PAD.left + ((x - xmin) / (xmax - xmin)) * iw;
    const sy = (y) => PAD.top + ih - ((y - ymin) / (ymax - ymin || 1)) * ih;

    const root = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": series.map((s) => s.name).join(", ")});
    const grid = svg("g", {class: "grid"});
    for (const v of yt) {
      grid.append(svg("line", {x1: PAD.left, x2: width - PAD.right, y1: sy(v), y2: sy(v)}),
        svg("text", {x: PAD.left - 8, y: sy(v) + 4, "text-anchor": "end"}, yLabel(v)));
    }
    for (const v of xt) {
      grid.append(svg("line", {class: "xtick", x1: sx(v), x2: sx(v), y1: PAD.top + ih, y2: PAD.top + ih + 4}),
        svg("text", {x: sx(v), y: PAD.top + ih + 17, "text-anchor": "middle"}, xLabelOf(v)));
    }
    if (xLabel) grid.append(svg("text", {class: "axis-label", x: width - PAD.right, y: height - 2, "text-anchor": "end"}, xLabel));
    root.append(grid);
    for (const s of series) {
      const ps = s.points.filter((p) => isFinite(p.y) && isFinite(p.x));
      if (!ps.length) continue;
      const d = ps.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
      const g = svg("g", {class: ["series", "tone-" + s.tone]});
      g.append(svg("path", {d, class: s.dashed ? "dashed" : null}));
      if (s.markers || ps.length === 1) for (const p of ps) g.append(svg("circle", {cx: sx(p.x), cy: sy(p.y), r: 3}));
      root.append(g);
    }
    const cross = svg("line", {class: "cross", y1: PAD.top, y2: PAD.top + ih, visibility: "hidden"});
    root.append(cross);
    root.addEventListener("mousemove", (e) => {
      const rect = root.getBoundingClientRect();
      const x = xmin + ((e.clientX - rect.left - PAD.left) / iw) * (xmax - xmin);
      const rows = [];
      let at = null;
      for (const s of series) {
        if (!s.points.length) continue;
        const p = s.points.reduce((a, b) => (Math.abs(b.x - x) < Math.abs(a.x - x) ? b : a));
        at = at === null ? p.x : at;
        rows.push(h("div", {}, h("i", {class: ["swatch", "tone-" + s.tone]}), `${s.name}: ${yFormat(p.y)}`));
      }
      if (at === null) return;
      cross.setAttribute("x1", sx(at)); cross.setAttribute("x2", sx(at)); cross.setAttribute("visibility", "visible");
      replace(tip, h("div", {class: "tip-head"}, `${xLabel || "x"} ${xFormat(at)}`), rows);
      tip.hidden = false;
      const left = Math.min(sx(at) + 10, width - 170);
      tip.style.left = Math.max(0, left) + "px";
    });
    root.addEventListener("mouseleave", () => { tip.hidden = true; cross.setAttribute("visibility", "hidden"); });
    box.prepend(root);
  }

  const ro = new ResizeObserver(() => draw());
  ro.observe(box);
  return {
    update(next) { series = next; draw(); },
    disconnect() { ro.disconnect(); },
  };
}
