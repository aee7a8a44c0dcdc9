// A flow's DAG as an SVG graph: inputs on top, nodes in layers by longest path, outputs at the bottom.

import {svg} from "./dom.js";

const W = 236, H = 50, PILL_H = 34, GAP_X = 28, GAP_Y = 62, MARGIN = 16;

/** "${inputs.x}" or "inputs.x" -> "inputs.x"; "${node.output.f}" or "node" -> "node". */
function norm(ref) {
  let r = String(ref || "").trim();
  const m = /^\$\{([^}]+)\}$/.exec(r);
  if (m) r = m[1];
  const parts = r.split(".");
  if (parts[0] === "inputs" || parts[0] === "outputs") return parts.slice(0, 2).join(".");
  return parts[0];
}

function fit(text, max) {
  text = String(text);
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/** Build the graph model: [{id, kind, label, sub}], [{from, to}]. */
export function graphOf(flow) {
  const nodes = [];
  const ids = new Set();
  for (const name of Object.keys(flow.inputs || {})) {
    nodes.push({id: `inputs.${name}`, kind: "input", label: name});
    ids.add(`inputs.${name}`);
  }
  for (const n of flow.nodes || []) {
    const sub = [n.type, n.connection].filter(Boolean).join(" · ");
    nodes.push({id: n.name, kind: "node", type: n.type, label: n.name, sub});
    ids.add(n.name);
  }
  for (const [name, out] of Object.entries(flow.outputs || {})) {
    nodes.push({id: `outputs.${name}`, kind: "output", label: name, chat: out.is_chat_output});
    ids.add(`outputs.${name}`);
  }
  const edges = [];
  const seen = new Set();
  const add = (from, to) => {
    const key = from + "->" + to;
    if (ids.has(from) && ids.has(to) && from !== to && !seen.has(key)) { seen.add(key); edges.push({from, to}); }
  };
  for (const e of flow.edges || []) add(norm(e.from), norm(e.to));
  for (const [name, out] of Object.entries(flow.outputs || {})) {
    if (!edges.some((e) => e.to === `outputs.${name}`)) add(norm(out.reference), `outputs.${name}`);
  }
  return {nodes, edges};
}

/** Lay out and draw. Returns {element, setStatus(nodeName, status, title)}. */
export function drawDag(flow) {
  const {nodes, edges} = graphOf(flow);
  const preds = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) preds.get(e.to).push(e.from);

  // layer = longest path from a source; inputs first, outputs last
  const layer = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (layer.has(id)) return layer.get(id);
    if (visiting.has(id)) return 0; // a cycle is the server's to report; draw it flat
    visiting.add(id);
    const ps = preds.get(id) || [];
    const d = ps.length ? 1 + Math.max(...ps.map(depth)) : (id.startsWith("inputs.") ? 0 : 1);
    visiting.delete(id);
    layer.set(id, d);
    return d;
  };
  nodes.forEach((n) => depth(n.id));
  const inner = nodes.filter((n) => n.kind !== "output").map((n) => layer.get(n.id));
  const last = Math.max(1, ...inner) + 1;
  for (const n of nodes) if (n.kind === "output") layer.set(n.id, last);
  for (const n of nodes) if (n.kind === "node" && layer.get(n.id) === 0) layer.set(n.id, 1);

  const layers = [];
  for (const n of nodes) (layers[layer.get(n.id)] ||= []).push(n);
  const rows = layers.filter(Boolean);
  // order each layer by the mean position of its predecessors (two sweeps)
  const pos = new Map();
  rows.forEach((row) => row.forEach((n, i) => pos.set(n.id, i)));
  for (let sweep = 0; sweep < 2; sweep++) {
    for (const row of rows.slice(1)) {
      const key = (n) => {
        const ps = preds.get(n.id);
        return ps.length ? ps.reduce((a, p) => a + pos.get(p), 0) / ps.length : pos.get(n.id);
      };
      row.sort((a, b) => key(a) - key(b));
      row.forEach((n, i) => pos.set(n.id, i));
    }
  }

  const widest = Math.max(...rows.map((r) => r.length));
  const width = MARGIN * 2 + widest * W + (widest - 1) * GAP_X;
  const at = new Map();
  let y = MARGIN;
  for (const row of rows) {
    const rowH = Math.max(...row.map((n) => (n.kind === "node" ? H : PILL_H)));
    const rowW = row.length * W + (row.length - 1) * GAP_X;
    let x = (width - rowW) / 2;
    for (const n of row) {
      const nh = n.kind === "node" ? H : PILL_H;
      at.set(n.id, {x, y: y + (rowH - nh) / 2, w: W, h: nh});
      x += W + GAP_X;
    }
    y += rowH + GAP_Y;
  }
  const height = y - GAP_Y + MARGIN;

  // scales down to fit, but not below 2/3 of its size: past that the box scrolls and the labels stay legible
  const root = svg("svg", {class: "dag", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "flow graph",
    style: {width: "100%", maxWidth: `${width}px`, minWidth: `${Math.round(width * 2 / 3)}px`, height: "auto"}});
  root.append(svg("defs", {}, svg("marker", {id: "dag-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"}, svg("path", {d: "M0,0 L10,5 L0,10 z"}))));
  const edgeLayer = svg("g", {class: "dag-edges"});
  for (const e of edges) {
    const a = at.get(e.from), b = at.get(e.to);
    const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y - 2;
    const my = (y1 + y2) / 2;
    edgeLayer.append(svg("path", {d: `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`, "marker-end": "url(#dag-arrow)",
      "data-from": e.from, "data-to": e.to}));
  }
  root.append(edgeLayer);
  const boxes = new Map();
  for (const n of nodes) {
    const p = at.get(n.id);
    const g = svg("g", {class: ["dag-node", "kind-" + n.kind, n.type && "type-" + n.type], "data-node": n.label,
      transform: `translate(${p.x},${p.y})`});
    g.append(svg("title", {}, n.kind === "node" ? `${n.label} (${n.sub})` : `${n.kind} ${n.label}`));
    g.append(svg("rect", {width: p.w, height: p.h, rx: n.kind === "node" ? 8 : p.h / 2}));
    if (n.kind === "node") {
      g.append(svg("text", {class: "dag-label", x: 14, y: 21}, fit(n.label, 25)),
        svg("text", {class: "dag-sub", x: 14, y: 38}, fit(n.sub, 34)),
        svg("circle", {class: "dag-status", cx: p.w - 14, cy: 14, r: 5}));
      boxes.set(n.label, g);
    } else {
      g.append(svg("text", {class: "dag-label", x: p.w / 2, y: p.h / 2 + 5, "text-anchor": "middle"},
        fit((n.kind === "input" ? "in: " : "out: ") + n.label, 26)));
    }
    root.append(g);
  }
  return {
    element: root,
    setStatus(name, status, detail) {
      const g = boxes.get(name);
      if (!g) return;
      g.setAttribute("data-status", status || "");
      g.querySelector("title").textContent = `${name}: ${status || "not run"}${detail ? " — " + detail : ""}`;
    },
  };
}
