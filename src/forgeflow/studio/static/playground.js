// Playground: chat with an endpoint (or one deployment of it) or a chat flow, streaming, with history and
// parameters; "Compare" sends each message to a second target too, e.g. the base model's deployment.

import {get, seg, streamEndpointChat, streamFlowTest} from "./api.js";
import {button, clear, empty, h, pageHead, replace} from "./dom.js";

const STORE = "forgeflow.playground";

function load() {
  try { return JSON.parse(sessionStorage.getItem(STORE)) || {}; } catch { return {}; }
}

export default async function playground(root, ctx) {
  root.append(pageHead("Playground", "Chat with a deployed model or a chat flow; compare it with another target side by side."));
  const [eps, flows] = await Promise.all([get("/endpoints", {signal: ctx.signal}),
    get("/flows", {signal: ctx.signal}).catch(() => [])]);
  const chatFlows = flows.filter((f) => f.is_chat && !f.error);

  const options = [];
  for (const ep of eps) {
    options.push({value: `ep:${ep.name}`, label: `${ep.name} (live traffic)`, group: "Endpoints", endpoint: ep.name});
    for (const d of ep.deployments) {
      options.push({value: `ep:${ep.name}/${d}`, label: `${ep.name} › ${d}`, group: "Endpoints", endpoint: ep.name, deployment: d});
    }
  }
  for (const f of chatFlows) options.push({value: `flow:${f.name}`, label: f.name, group: "Chat flows", flow: f.name});
  if (!options.length) {
    root.append(empty("Nothing to chat with yet: deploy a model to an endpoint, or add a chat flow.",
      h("a", {class: "btn btn-primary", href: "#/endpoints"}, "Endpoints"), h("a", {class: "btn", href: "#/flows"}, "Flows")));
    return;
  }
  const byValue = new Map(options.map((o) => [o.value, o]));

  const saved = load();
  const q = ctx.route.query;
  let first = saved.a && byValue.has(saved.a.target) ? saved.a.target : options[0].value;
  if (q.get("endpoint")) first = `ep:${q.get("endpoint")}` + (q.get("deployment") ? `/${q.get("deployment")}` : "");
  if (q.get("flow")) first = `flow:${q.get("flow")}`;
  if (!byValue.has(first)) first = options[0].value;

  const panes = [
    {target: first, messages: saved.a && saved.a.target === first ? saved.a.messages || [] : []},
    {target: saved.b && byValue.has(saved.b.target) ? saved.b.target : null, messages: (saved.b && saved.b.messages) || []},
  ];
  let compare = !!saved.compare && !!panes[1].target;

  // ---- settings ----
  const selectFor = (i) => {
    const sel = h("select", {"aria-label": i ? "second target" : "target", name: i ? "target-b" : "target-a"},
      ["Endpoints", "Chat flows"].map((g) => {
        const opts = options.filter((o) => o.group === g);
        return opts.length ? h("optgroup", {label: g}, opts.map((o) => h("option", {value: o.value}, o.label))) : null;
      }));
    sel.addEventListener("change", () => {
      panes[i].target = sel.value;
      panes[i].messages = [];
      renderPanes();
      persist();
    });
    return sel;
  };
  const selA = selectFor(0);
  const selB = selectFor(1);
  const compareBox = h("input", {type: "checkbox", name: "compare", checked: compare});
  const temperature = h("input", {type: "range", min: "0", max: "2", step: "0.05", name: "temperature",
    value: String(saved.temperature ?? 0.7)});
  const tempOut = h("output", {}, temperature.value);
  const maxTokens = h("input", {type: "number", min: "1", max: "4096", step: "1", name: "max_tokens",
    value: String(saved.maxTokens ?? 128)});
  const system = h("textarea", {rows: 3, name: "system", placeholder: "optional system message"}, saved.system || "");
  temperature.addEventListener("input", () => { tempOut.textContent = temperature.value; persist(); });
  maxTokens.addEventListener("change", persist);
  system.addEventListener("change", persist);
  const bField = h("div", {class: "field"}, h("label", {}, "Compare with"), selB,
    h("div", {class: "hint"}, "Each message goes to both; e.g. the base model's deployment, to see what fine-tuning changed."));
  compareBox.addEventListener("change", () => {
    compare = compareBox.checked;
    if (compare && !panes[1].target) {
      panes[1].target = defaultSecond(panes[0].target);
      panes[1].messages = [];
    }
    renderPanes();
    persist();
  });
  const settings = h("aside", {class: "pg-settings card"},
    h("div", {class: "field"}, h("label", {}, "Chat with"), selA),
    h("label", {class: "check"}, compareBox, " Compare side by side"),
    bField,
    h("details", {class: "pg-params", open: !window.matchMedia("(max-width: 760px)").matches},
      h("summary", {}, "Parameters"),
      h("div", {class: "field"}, h("label", {}, "Temperature ", tempOut), temperature),
      h("div", {class: "field"}, h("label", {}, "Max new tokens"), maxTokens),
      h("div", {class: "field"}, h("label", {}, "System message"), system),
      h("p", {class: "hint"}, "Temperature, max new tokens and the system message apply to endpoints; a flow uses its own settings.")));

  function defaultSecond(a) {
    const o = byValue.get(a);
    const same = options.filter((x) => x.value !== a && o.endpoint && x.endpoint === o.endpoint && x.deployment);
    const base = same.find((x) => /base/i.test(x.deployment)) || same.find((x) => x.deployment !== o.deployment);
    return (base || options.find((x) => x.value !== a) || o).value;
  }

  // ---- conversation panes ----
  const paneHost = h("div", {class: "pg-panes"});
  const input = h("textarea", {rows: 2, name: "message", placeholder: "Ask something…  (Enter sends, Shift+Enter for a new line)",
    "aria-label": "message"});
  const send = h("button", {type: "submit", class: "btn btn-primary"}, "Send");
  let controllers = [];
  const stop = button("Stop", () => controllers.forEach((c) => c.abort()), {disabled: true});
  const newChat = button("New chat", () => {
    panes.forEach((p) => { p.messages = []; });
    renderPanes();
    persist();
    input.focus({preventScroll: true});
  });
  const composer = h("form", {class: "pg-composer", novalidate: true}, input, h("div", {class: "actions"}, newChat, stop, send));
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); composer.requestSubmit(); }
  });
  root.append(h("div", {class: "playground"}, settings, h("section", {class: "pg-main"}, paneHost, composer)));

  const views = [];
  function renderPanes() {
    selA.value = panes[0].target;
    if (panes[1].target) selB.value = panes[1].target;
    bField.hidden = !compare;
    paneHost.classList.toggle("two", compare);
    clear(paneHost);
    views.length = 0;
    const active = compare ? panes : [panes[0]];
    active.forEach((p, i) => {
      const o = byValue.get(p.target);
      const log = h("div", {class: "pg-log", "aria-live": "polite", "data-testid": `transcript-${i ? "b" : "a"}`});
      const view = {pane: p, log};
      views.push(view);
      paneHost.append(h("div", {class: "pg-pane"},
        h("div", {class: "pg-pane-head"}, h("b", {}, o.label), h("span", {class: "muted small"}, o.flow ? "chat flow" : o.deployment ? "one deployment" : "by traffic")),
        log));
      if (!p.messages.length) log.append(h("p", {class: "muted pg-empty"}, "No messages yet."));
      for (const m of p.messages) log.append(bubble(m.role, m.content, m.meta));
      log.scrollTop = log.scrollHeight;
    });
  }

  function persist() {
    sessionStorage.setItem(STORE, JSON.stringify({
      a: panes[0], b: panes[1], compare, temperature: Number(temperature.value), maxTokens: Number(maxTokens.value),
      system: system.value}));
  }

  composer.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || send.disabled) return;
    input.value = "";
    send.disabled = true; stop.disabled = false; newChat.disabled = true;
    controllers = [];
    const runs = views.map((view) => answer(view, text));
    await Promise.allSettled(runs);
    send.disabled = false; stop.disabled = true; newChat.disabled = false;
    controllers = [];
    persist();
    input.focus({preventScroll: true});
  });

  async function answer(view, text) {
    const p = view.pane;
    const o = byValue.get(p.target);
    const history = p.messages.filter((m) => !m.error);
    p.messages.push({role: "user", content: text});
    const empty_ = view.log.querySelector(".pg-empty");
    if (empty_) empty_.remove();
    view.log.append(bubble("user", text));
    const out = bubble("assistant", "", null, true);
    view.log.append(out);
    view.log.scrollTop = view.log.scrollHeight;
    const body = out.querySelector(".text");
    const controller = new AbortController();
    controllers.push(controller);
    ctx.onLeave(() => controller.abort());
    const started = performance.now();
    let chunks = 0;
    const onText = (delta) => {
      chunks++;
      body.textContent += delta;
      const stick = view.log.scrollHeight - view.log.scrollTop - view.log.clientHeight < 60;
      if (stick) view.log.scrollTop = view.log.scrollHeight;
    };
    try {
      let meta;
      if (o.flow) {
        const flow = await flowInfo(o.flow);
        const inputs = {[flow.chat.input]: text};
        if (flow.chat.history) {
          inputs[flow.chat.history] = pairs(history).map(([u, a]) => ({inputs: {[flow.chat.input]: u}, outputs: {[flow.chat.output]: a}}));
        }
        const result = await streamFlowTest({flow: o.flow, inputs, signal: controller.signal,
          onDelta: (name, delta) => { if (name === flow.chat.output) onText(delta); }});
        const final = result.outputs ? result.outputs[flow.chat.output] : undefined;
        if (typeof final === "string" && final !== body.textContent) body.textContent = final;
        meta = `flow ${o.flow} · ${secs(started)}`;
      } else {
        const creds = await get(`/endpoints/${seg(o.endpoint)}/credentials`, {signal: controller.signal});
        const messages = [];
        if (system.value.trim()) messages.push({role: "system", content: system.value.trim()});
        messages.push(...history.map(({role, content}) => ({role, content})), {role: "user", content: text});
        const res = await streamEndpointChat({endpoint: o.endpoint, deployment: o.deployment,
          key: creds.primary_key || creds.access_token, messages, temperature: Number(temperature.value),
          maxTokens: Number(maxTokens.value) || undefined, signal: controller.signal, onDelta: onText});
        meta = [res.deployment ? `deployment ${res.deployment}` : null, `${chunks} chunks`, secs(started),
          res.finish_reason === "length" ? "stopped at max new tokens" : null].filter(Boolean).join(" · ");
      }
      out.classList.remove("streaming");
      setMeta(out, meta);
      p.messages.push({role: "assistant", content: body.textContent, meta});
    } catch (err) {
      out.classList.remove("streaming");
      const stopped = err.name === "AbortError";
      out.classList.add(stopped ? "stopped" : "failed");
      if (!stopped) out.append(h("div", {class: "bubble-error", role: "alert"}, err.message));
      setMeta(out, stopped ? "stopped" : "failed");
      p.messages.push({role: "assistant", content: body.textContent, meta: stopped ? "stopped" : "failed: " + err.message,
        error: !stopped || !body.textContent});
    }
  }

  const flowCache = new Map();
  async function flowInfo(name) {
    if (!flowCache.has(name)) flowCache.set(name, await get(`/flows/${seg(name)}`));
    return flowCache.get(name);
  }

  renderPanes();
  input.focus({preventScroll: true});
}

/** [[user, assistant], ...] from a message list (for a chat flow's history). */
function pairs(messages) {
  const out = [];
  for (let i = 0; i < messages.length - 1; i++) {
    if (messages[i].role === "user" && messages[i + 1].role === "assistant") out.push([messages[i].content, messages[i + 1].content]);
  }
  return out;
}

function secs(started) {
  return `${((performance.now() - started) / 1000).toFixed(1)} s`;
}

function bubble(role, content, meta, streaming) {
  const failed = meta && String(meta).startsWith("failed");
  const el = h("div", {class: ["msg", "role-" + role, streaming && "streaming", failed && "failed"]},
    h("div", {class: "text"}, content));
  if (failed) el.append(h("div", {class: "bubble-error"}, String(meta).replace(/^failed: /, "")));
  if (meta) setMeta(el, failed ? "failed" : meta);
  return el;
}

function setMeta(el, text) {
  let m = el.querySelector(".msg-meta");
  if (!m) { m = h("div", {class: "msg-meta"}); el.append(m); }
  replace(m, text);
}
