// Flows: the bundled and workspace flows; a flow's page draws its DAG and runs a test with inputs.

import {get, seg, streamFlowTest} from "./api.js";
import {drawDag} from "./dag.js";
import {
  badge, button, clear, empty, errorBox, field, fmtDuration, h, hashFor, note, pageHead, replace, richText, table,
} from "./dom.js";

export default async function flows(root, ctx) {
  const name = ctx.route.parts[1];
  if (name) return flowPage(root, ctx, name);
  root.append(pageHead("Flows", "Prompt flow's flow.dag.yaml: inputs, Python / LLM / prompt nodes, outputs."));
  const list = await get("/flows", {signal: ctx.signal});
  root.append(h("section", {class: "card", "data-testid": "flows"}, table([
    {label: "Flow", render: (f) => h("a", {href: hashFor("flows", f.name)}, h("b", {}, f.name))},
    {label: "Kind", render: (f) => (f.error ? badge("broken", "bad") : f.is_chat ? badge("chat", "busy") : badge("standard", "off"))},
    {label: "Source", render: (f) => f.source},
    {label: "About", cls: "wrap", render: (f) => (f.error ? h("span", {class: "bad-text"}, f.error) : h("span", {}, richText(f.description)))},
    {label: "", render: (f) => (f.is_chat ? h("a", {class: "btn btn-small", href: `#/playground?flow=${encodeURIComponent(f.name)}`,
      "data-needs": "contributor"}, "Chat") : null)},
  ], list, {empty: "No flows. Add a folder with flow.dag.yaml to the workspace's flows folder."})));
}

async function flowPage(root, ctx, name) {
  const [flow, conns] = await Promise.all([get(`/flows/${seg(name)}`, {signal: ctx.signal}),
    get("/connections", {signal: ctx.signal})]);
  root.append(pageHead(name, h("span", {}, h("a", {href: "#/flows"}, "Flows"), " / ", name),
    flow.chat ? h("a", {class: "btn btn-primary", href: `#/playground?flow=${encodeURIComponent(name)}`, "data-needs": "contributor"},
      "Chat with it") : null));
  if (flow.description) root.append(h("p", {class: "lead"}, richText(flow.description)));
  // an llm node names its connection; a python tool gets one as a literal input (`connection: custom-phi3`)
  for (const n of flow.nodes) n.connection = n.connection || literalConnection(n);
  const have = new Set(conns.map((c) => c.name));
  const missing = [...new Set(flow.nodes.map((n) => n.connection).filter((c) => c && !have.has(c)))];
  if (missing.length) {
    root.append(note(h("span", {}, `This flow uses the connection${missing.length > 1 ? "s" : ""} `,
      missing.map((m, i) => [i ? ", " : "", h("code", {}, m)]), ", which does not exist yet. ",
      h("span", {"data-needs": "contributor"}, missing.map((m, i) => [i ? ", " : "", h("a", {href: `#/connections?name=${
        encodeURIComponent(m)}&type=${encodeURIComponent(connectionType(flow, m))}`}, `Create ${m}`)]),
      " from an endpoint before running it.")), "warn"));
  }
  const dag = drawDag(flow);
  const graphCard = h("section", {class: "card", "data-testid": "dag"}, h("h2", {}, "Graph"), h("div", {class: "dag-wrap"}, dag.element));
  const nodesCard = h("section", {class: "card"}, h("h2", {}, "Nodes"), table([
    {label: "Node", cls: "wrap-sm", render: (n) => h("div", {}, h("b", {}, n.name),
      h("div", {class: "muted small"}, [n.type, n.source, n.connection && `connection ${n.connection}`].filter(Boolean).join(" · ")))},
    {label: "Inputs", cls: "wrap", render: (n) => h("ul", {class: "pairs"}, Object.entries(n.inputs || {}).map(([k, v]) =>
      h("li", {}, h("code", {}, k), " ← ", h("code", {}, v))))},
  ], flow.nodes));
  root.append(graphCard, h("div", {class: "grid-2"}, testCard(ctx, name, flow, dag), nodesCard));
}

function literalConnection(node) {
  for (const [k, v] of Object.entries(node.inputs || {})) {
    if (/(^|_)connection$/.test(k) && typeof v === "string" && v && !v.startsWith("${")) return v;
  }
  return null;
}

/** An llm node talks to an OpenAI-style API (open_ai connection); a python tool takes a custom one. */
function connectionType(flow, name) {
  return flow.nodes.some((n) => n.connection === name && (n.type === "llm" || n.api)) ? "open_ai" : "custom";
}

function inputControl(name, spec) {
  const t = spec.type || "string";
  const def = spec.default;
  if (t === "bool") return h("input", {type: "checkbox", name, checked: !!def});
  if (t === "int" || t === "double") return h("input", {type: "number", name, step: t === "int" ? "1" : "any", value: def ?? ""});
  if (t === "list" || t === "object" || spec.is_chat_history) {
    return h("textarea", {name, rows: 3, class: "mono", spellcheck: "false"},
      JSON.stringify(def ?? (t === "object" ? {} : []), null, 0));
  }
  if (spec.is_chat_input) return h("textarea", {name, rows: 2}, def ?? "");
  return h("input", {type: "text", name, value: def ?? ""});
}

function readInput(el, spec) {
  const t = spec.type || "string";
  if (t === "bool") return el.checked;
  if (t === "int" || t === "double") return el.value === "" ? null : Number(el.value);
  if (t === "list" || t === "object" || spec.is_chat_history) {
    try { return JSON.parse(el.value || "null"); } catch { throw new Error(`${el.name}: not valid JSON`); }
  }
  return el.value;
}

function testCard(ctx, name, flow, dag) {
  const controls = Object.entries(flow.inputs || {}).map(([k, spec]) => [k, spec, inputControl(k, spec)]);
  const outputs = h("div", {class: "outputs", "data-testid": "flow-outputs"});
  const errorSlot = h("div");
  const summary = h("div", {class: "muted small"});
  let controller = null;
  const stop = button("Stop", () => controller && controller.abort(), {disabled: true});
  const run = h("button", {type: "submit", class: "btn btn-primary"}, "Run test");
  const form = h("form", {class: "card form", novalidate: true, "data-needs": "contributor"}, h("h2", {}, "Test run"),
    controls.map(([k, spec, el]) => field(h("span", {}, h("code", {}, k), spec.is_chat_input ? " (chat input)" : "",
      spec.is_chat_history ? " (chat history)" : ""), el, {name: k, hint: spec.description || null})),
    h("div", {class: "actions"}, stop, run), errorSlot, summary, outputs);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(errorSlot); clear(outputs); clear(summary);
    let inputs;
    try {
      inputs = Object.fromEntries(controls.map(([k, spec, el]) => [k, readInput(el, spec)]));
    } catch (err) {
      replace(errorSlot, errorBox(err));
      return;
    }
    for (const n of flow.nodes) dag.setStatus(n.name, "Running");
    const pres = new Map();
    const outPre = (key) => {
      if (!pres.has(key)) {
        const pre = h("pre", {class: "output-text"});
        pres.set(key, pre);
        outputs.append(h("div", {class: "output"}, h("h3", {}, h("code", {}, key)), pre));
      }
      return pres.get(key);
    };
    controller = new AbortController();
    ctx.onLeave(() => controller && controller.abort());
    run.disabled = true; stop.disabled = false;
    replace(summary, "running…");
    try {
      const result = await streamFlowTest({flow: name, inputs, signal: controller.signal,
        onDelta: (key, delta) => { outPre(key).textContent += delta; }});
      for (const [key, value] of Object.entries(result.outputs || {})) {
        outPre(key).textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
      }
      for (const [node, st] of Object.entries(result.nodes || {})) dag.setStatus(node, st.status, st.error);
      const nodeText = Object.entries(result.nodes || {}).map(([n, st]) =>
        `${n}: ${st.status}${st.duration_s !== undefined ? " in " + fmtDuration(st.duration_s) : ""}`).join(" · ");
      replace(summary, `Finished in ${result.duration_s !== undefined ? result.duration_s.toFixed(2) + " s" : "–"}. ${nodeText}`);
      if (!Object.keys(result.outputs || {}).length) outputs.append(empty("The run produced no outputs."));
    } catch (err) {
      for (const n of flow.nodes) {
        const st = err.nodes && err.nodes[n.name];
        dag.setStatus(n.name, st ? st.status : "", st ? st.error : null);
      }
      clear(summary);
      replace(errorSlot, errorBox(err.name === "AbortError" ? "Stopped." : err));
    } finally {
      run.disabled = false; stop.disabled = true; controller = null;
    }
  });
  return form;
}
