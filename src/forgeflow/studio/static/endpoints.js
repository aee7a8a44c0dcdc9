// Endpoints: the list and creating one; an endpoint's page has its deployments (state, instance health,
// traffic with the 100% rule), a Consume tab (URI, keys, snippets), the deployments' logs and the Rollout tab
// (rollout.js: the running or last rollout's steps and evidence).

import {can} from "./access.js";
import {del, get, patch, post, seg} from "./api.js";
import {
  badge, busy, button, clear, onSubmit, confirmDialog, empty, field, h, hashFor, kv, note, pageHead,
  replace, showError, table, tabs, timeEl, toast,
} from "./dom.js";

export default async function endpoints(root, ctx) {
  const [, name, tab] = ctx.route.parts;
  if (name) return endpointPage(root, ctx, name, tab || "deployments");
  return list(root, ctx);
}

function trafficText(ep) {
  const parts = Object.entries(ep.traffic || {}).filter(([, p]) => p > 0)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([d, p]) => `${d} ${p}%`);
  return parts.length ? parts.join(" · ") : "no live traffic";
}

// ---- list ---------------------------------------------------------------------------------------------

async function list(root, ctx) {
  const deploy = ctx.route.query.get("deploy");
  root.append(pageHead("Endpoints", "An endpoint is a scoring URI with keys; its deployments serve models behind it."));
  if (deploy) root.append(note(h("span", {}, "Deploying ", h("b", {}, deploy), ": choose an endpoint below, or create a new one.")));
  const host = h("section", {class: "card"});
  root.append(h("div", {class: "grid-2 wide-left"}, host, createForm(ctx, deploy)));
  ctx.poll(async () => {
    const eps = await get("/endpoints", {signal: ctx.signal});
    replace(host, h("h2", {}, "Endpoints"), table([
      {label: "Name", render: (ep) => h("a", {href: hashFor("endpoints", ep.name)}, h("b", {}, ep.name))},
      {label: "State", render: (ep) => badge(ep.provisioning_state)},
      {label: "Deployments", render: (ep) => (ep.deployments.length ? ep.deployments.join(", ") : h("span", {class: "muted"}, "none"))},
      {label: "Traffic", render: trafficText},
      {label: "Created", render: (ep) => timeEl(ep.created_at)},
      {label: "", render: (ep) => (deploy ? h("a", {class: "btn btn-small btn-primary", "data-needs": "contributor",
        href: `${hashFor("endpoints", ep.name)}?deploy=${encodeURIComponent(deploy)}`}, "Deploy here")
        : h("a", {class: "btn btn-small", href: hashFor("endpoints", ep.name, "consume")}, "Consume"))},
    ], eps, {empty: "No endpoints yet: create one, then add a deployment of a registered model."}));
  }, 5000);
}

function createForm(ctx, deploy) {
  const name = h("input", {type: "text", name: "name", placeholder: "e.g. quill-ep", autocomplete: "off", spellcheck: "false"});
  const auth = h("select", {name: "auth_mode"}, h("option", {value: "key"}, "key: primary and secondary keys"),
    h("option", {value: "token"}, "token: expiring tokens"));
  const description = h("input", {type: "text", name: "description", placeholder: "optional"});
  const users = h("input", {type: "text", name: "allowed_users", placeholder: "optional, e.g. alice, bob", autocomplete: "off",
    spellcheck: "false"});
  const usersField = field("Allowed users", users, {name: "allowed_users",
    hint: "Besides the endpoint's own tokens, these users' personal access tokens may call it."});
  usersField.hidden = true;
  auth.addEventListener("change", () => { usersField.hidden = auth.value !== "token"; });
  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn btn-primary"}, "Create endpoint");
  const form = h("form", {class: "card form", novalidate: true, "data-needs": "contributor"}, h("h2", {}, "New endpoint"),
    field("Name", name, {name: "name", hint: "3-32 characters: a letter first, then letters, digits and dashes."}),
    field("Authentication", auth, {name: "auth_mode"}),
    usersField,
    field("Description", description, {name: "description"}),
    status, h("div", {class: "actions"}, submit));
  onSubmit(form, status, (e) => {
    busy(submit, async () => {
      try {
        const allowed = users.value.split(/[\s,]+/).filter(Boolean);
        const ep = await post("/endpoints", {name: name.value.trim(), auth_mode: auth.value,
          description: description.value.trim() || null,
          ...(auth.value === "token" && allowed.length ? {allowed_users: allowed} : {})}, {signal: ctx.signal});
        toast(`Created endpoint ${ep.name}`);
        location.hash = hashFor("endpoints", ep.name) + (deploy ? `?deploy=${encodeURIComponent(deploy)}` : "");
      } catch (err) {
        if (err.name !== "AbortError") showError(form, err, status);
      }
    });
  });
  return form;
}

// ---- one endpoint -----------------------------------------------------------------------------------

async function endpointPage(root, ctx, name, tab) {
  let ep = await get(`/endpoints/${seg(name)}`, {signal: ctx.signal});
  const remove = button("Delete endpoint", async () => {
    if (!await confirmDialog(`Delete endpoint ${name}?`, {ok: "Delete", danger: true,
      detail: "Its deployments stop and its keys stop working."})) return;
    await busy(remove, async () => {
      await del(`/endpoints/${seg(name)}`);
      toast(`Deleted ${name}`);
      location.hash = "#/endpoints";
    });
  }, {kind: "danger", needs: "contributor"});
  root.append(pageHead(name, h("span", {}, h("a", {href: "#/endpoints"}, "Endpoints"), " / ", name),
    h("a", {class: "btn", href: `#/playground?endpoint=${encodeURIComponent(name)}`, "data-needs": "contributor"},
      "Open in playground"), remove));
  root.append(tabs([
    {id: "deployments", label: "Deployments", href: hashFor("endpoints", name)},
    {id: "consume", label: "Consume", href: hashFor("endpoints", name, "consume")},
    {id: "logs", label: "Logs", href: hashFor("endpoints", name, "logs")},
    {id: "rollout", label: "Rollout", href: hashFor("endpoints", name, "rollout")},
  ], tab));
  const body = h("div", {class: "tab-body"});
  root.append(body);
  if (tab === "consume") return (await import("./consume.js")).consume(body, ctx, ep);
  if (tab === "logs") return (await import("./consume.js")).logs(body, ctx, ep);
  if (tab === "rollout") return (await import("./rollout.js")).rollout(body, ctx, ep);
  return deploymentsTab(body, ctx, ep, (next) => { ep = next; });
}

async function deploymentsTab(root, ctx, ep, setEp) {
  const name = ep.name;
  const summary = h("section", {class: "card"});
  const depsCard = h("section", {class: "card", "data-testid": "deployments"});
  const trafficInputs = new Map(); // deployment -> input, kept across refreshes so typing is never lost
  let dirty = false;
  const trafficStatus = h("div", {class: "traffic-status"});
  const trafficError = h("div");
  const saveTraffic = button("Save traffic", () => save(), {kind: "primary", testid: "save-traffic", needs: "contributor"});
  const resetTraffic = button("Reset", () => { dirty = false; syncTraffic(); check(); }, {needs: "contributor"});

  function input(dep) {
    if (!trafficInputs.has(dep)) {
      const el = h("input", {type: "number", min: "0", max: "100", step: "1", class: "pct", "aria-label": `traffic to ${dep}`,
        name: `traffic-${dep}`, readOnly: !can("contributor"), on: {input: () => { dirty = true; check(); }}});
      trafficInputs.set(dep, el);
    }
    return trafficInputs.get(dep);
  }
  function syncTraffic() {
    for (const [dep, el] of trafficInputs) el.value = String((ep.traffic || {})[dep] || 0);
  }
  function total() {
    let sum = 0, bad = null;
    for (const [dep, el] of trafficInputs) {
      const v = el.value.trim() === "" ? 0 : Number(el.value);
      if (!Number.isInteger(v) || v < 0 || v > 100) bad = dep;
      else sum += v;
    }
    return {sum, bad};
  }
  function check() {
    const {sum, bad} = total();
    const ok = !bad && (sum === 100 || sum === 0);
    replace(trafficStatus, bad ? `Traffic to ${bad} must be a whole number from 0 to 100.`
      : `Total ${sum}%` + (ok ? (sum === 0 ? ": no deployment gets live traffic" : "") : ": traffic must add up to 100% (or 0%)"));
    trafficStatus.className = "traffic-status " + (ok ? "ok" : "bad");
    saveTraffic.disabled = !ok || !dirty;
    resetTraffic.disabled = !dirty;
    return ok;
  }
  async function save() {
    if (!check()) return;
    const traffic = {};
    for (const [dep, el] of trafficInputs) traffic[dep] = el.value.trim() === "" ? 0 : Number(el.value);
    await busy(saveTraffic, async () => {
      const next = await patch(`/endpoints/${seg(name)}`, {traffic});
      ep = next; setEp(next);
      dirty = false;
      syncTraffic();
      check();
      renderSummary();
      toast(`Traffic: ${trafficText(next)}`);
    }, trafficError);
  }

  function renderSummary() {
    const mirror = Object.entries(ep.mirror_traffic || {});
    replace(summary, h("h2", {}, "Endpoint ", badge(ep.provisioning_state)), kv([
      ["Scoring URI", h("code", {class: "break"}, ep.scoring_uri)],
      ["Authentication", ep.auth_mode],
      ep.allowed_users ? ["Allowed users", ep.allowed_users.join(", ")] : null,
      ["Live traffic", trafficText(ep)],
      mirror.length ? ["Mirrored", mirror.map(([d, p]) => `${d} ${p}%`).join(", ")] : null,
      ep.description ? ["Description", ep.description] : null,
      ["Created", timeEl(ep.created_at)],
    ]));
  }

  async function refresh() {
    const [next, deps] = await Promise.all([get(`/endpoints/${seg(name)}`, {signal: ctx.signal}),
      get(`/endpoints/${seg(name)}/deployments`, {signal: ctx.signal})]);
    ep = next; setEp(next);
    for (const dep of [...trafficInputs.keys()]) if (!deps.some((d) => d.name === dep)) trafficInputs.delete(dep);
    deps.forEach((d) => input(d.name));
    if (!dirty) syncTraffic();
    renderSummary();
    const settling = deps.some((d) => ["Creating", "Updating", "Deleting"].includes(d.provisioning_state)
      || d.instances.some((i) => !i.ready));
    // someone typing a traffic value keeps their caret: the table is redrawn on the next refresh instead
    if ([...trafficInputs.values()].includes(document.activeElement)) return settling ? 1500 : 5000;
    replace(depsCard, h("div", {class: "card-head"}, h("h2", {}, "Deployments"),
      h("span", {class: "muted small"}, "state and instance health refresh by themselves")),
    deps.length ? [table([
      {label: "Deployment", render: (d) => h("b", {}, d.name)},
      {label: "Serves", render: (d) => h("span", {class: "ellipsis", title: d.model_path || ""},
        (Array.isArray(d.model) ? d.model.join(", ") : d.model) || d.model_ref || "–")},
      {label: "State", cls: "wrap-sm", render: (d) => [badge(d.provisioning_state), d.error ? h("div", {class: "small bad-text"}, d.error) : null]},
      {label: "Instances", render: instances},
      {label: "Traffic %", render: (d) => h("span", {class: "pct-cell"}, input(d.name), "%")},
      {label: "", render: (d) => h("span", {class: "row-actions"},
        h("a", {class: "btn btn-small", "data-needs": "contributor",
          href: `#/playground?endpoint=${encodeURIComponent(name)}&deployment=${encodeURIComponent(d.name)}`}, "Chat"),
        h("a", {class: "btn btn-small", href: `${hashFor("endpoints", name, "logs")}?deployment=${encodeURIComponent(d.name)}`}, "Logs"),
        removeButton(d))},
    ], deps),
    h("div", {class: "traffic-bar"}, trafficStatus, h("div", {class: "actions"}, resetTraffic, saveTraffic)), trafficError]
      : empty("No deployments yet: add one below."));
    check();
    return settling ? 1500 : 5000;
  }

  function removeButton(d) {
    const b = button("Delete", async () => {
      if (!await confirmDialog(`Delete deployment ${d.name}?`, {ok: "Delete", danger: true,
        detail: (ep.traffic || {})[d.name] ? "It still has live traffic: set its traffic to 0% first." : "Its model servers stop."})) return;
      await busy(b, async () => {
        await del(`/endpoints/${seg(name)}/deployments/${seg(d.name)}`);
        toast(`Deleting ${d.name}`);
        await refresh();
      }, trafficError);
    }, {kind: "small", needs: "contributor"});
    return b;
  }

  root.append(depsCard, h("div", {class: "grid-2"}, summary, await deploymentForm(ctx, ep, () => refresh())));
  let delay = 5000;
  ctx.poll(async () => { delay = await refresh(); }, () => delay);
}

function instances(d) {
  if (!d.instances.length) return h("span", {class: "muted"}, "none");
  const ready = d.instances.filter((i) => i.ready).length;
  return h("span", {class: "instances"}, d.instances.map((i) => h("span", {
    class: ["dot", i.ready ? "ready" : "down"],
    title: `instance ${i.index}: ${i.ready ? "ready" : "not ready"}, ${i.inflight} in flight, ${i.restarts} restarts` +
      (i.pid ? `, pid ${i.pid}` : ""),
  })), ` ${ready}/${d.instances.length} ready`,
  d.instances.some((i) => i.restarts) ? h("span", {class: "muted small"}, ` · ${d.instances.reduce((a, i) => a + i.restarts, 0)} restarts`) : null);
}

async function deploymentForm(ctx, ep, refreshed) {
  const [models, flows, targets] = await Promise.all([
    get("/models", {signal: ctx.signal}),
    get("/flows", {signal: ctx.signal}).catch(() => []),
    get("/compute", {signal: ctx.signal}).catch(() => [{name: "local", type: "local"}])]);
  const deploy = ctx.route.query.get("deploy");
  const taken = new Set(ep.deployments);
  const suggest = ["blue", "green", "base", "canary"].find((n) => !taken.has(n)) || "";
  const name = h("input", {type: "text", name: "name", value: suggest, autocomplete: "off", spellcheck: "false"});
  const kind = h("select", {name: "kind"}, h("option", {value: "model"}, "a model"), h("option", {value: "flow"}, "a flow"));
  const modelOpts = h("datalist", {id: "deploy-models"}, models.filter((m) => m.kind !== "base" || m.pulled).map((m) =>
    h("option", {value: m.kind === "base" ? m.name : `${m.name}:${m.version}`}, m.kind === "base" ? "base model" : m.description || "registered")));
  const model = h("input", {type: "text", name: "model", list: "deploy-models", value: deploy || "", autocomplete: "off",
    spellcheck: "false", placeholder: "name:version, a base model, or a folder"});
  const flow = h("select", {name: "flow"}, flows.map((f) => h("option", {value: f.path}, f.name)));
  const count = h("input", {type: "number", name: "instance_count", value: "1", min: "1", step: "1"});
  const runtime = h("select", {name: "runtime"}, ["transformers", "llamacpp"].map((r) => h("option", {value: r}, r)));
  const compute = h("select", {name: "compute"}, targets.map((t) =>
    h("option", {value: t.name}, t.type === "ray" ? `${t.name} (Ray cluster)` : `${t.name} (this machine)`)));
  const allTraffic = h("input", {type: "checkbox", name: "all_traffic", checked: !Object.values(ep.traffic || {}).some((p) => p > 0)});
  const modelField = field("Model", h("div", {}, model, modelOpts), {name: "model"});
  const flowField = field("Flow", flow, {name: "flow"});
  flowField.hidden = true;
  const runtimeField = field("Runtime", runtime, {name: "runtime"});
  kind.addEventListener("change", () => {
    modelField.hidden = kind.value !== "model";
    runtimeField.hidden = kind.value !== "model";
    flowField.hidden = kind.value !== "flow";
  });
  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn btn-primary"}, "Deploy");
  const form = h("form", {class: "card form", id: "add-deployment", novalidate: true, "data-needs": "contributor"},
    h("h2", {}, "Add a deployment"),
    h("div", {class: "row"}, field("Name", name, {name: "name"}), field("Serves", kind, {})),
    modelField, flowField,
    h("div", {class: "row"}, field("Instances", count, {name: "instance_count"}), runtimeField,
      field("Compute", compute, {name: "compute"})),
    h("label", {class: "check"}, allTraffic, " Send all live traffic to it"),
    status, h("div", {class: "actions"}, submit));
  onSubmit(form, status, (e) => {
    const body = {name: name.value.trim(), instance_count: Number(count.value)};
    if (compute.value && compute.value !== "local") body.compute = compute.value;
    if (kind.value === "flow") {
      if (!flow.value) { showError(form, {field: "flow", message: "There is no flow to deploy."}); return; }
      body.flow = flow.value;
    } else {
      if (!model.value.trim()) { showError(form, {field: "model", message: "Name a model to serve."}); return; }
      body.model = model.value.trim();
      body.runtime = runtime.value;
    }
    busy(submit, async () => {
      submit.textContent = "Deploying…";
      try {
        const dep = await post(`/endpoints/${seg(ep.name)}/deployments`, body, {signal: ctx.signal});
        if (allTraffic.checked) await patch(`/endpoints/${seg(ep.name)}`, {traffic: {...zeroed(ep), [dep.name]: 100}});
        toast(`Deployment ${dep.name}: ${dep.provisioning_state}`);
        name.value = "";
        allTraffic.checked = false;
        await refreshed();
      } catch (err) {
        if (err.name !== "AbortError") showError(form, err, status);
      }
    });
  });
  if (deploy) setTimeout(() => form.scrollIntoView({block: "center"}), 0);
  return form;
}

function zeroed(ep) {
  return Object.fromEntries(Object.keys(ep.traffic || {}).map((d) => [d, 0]));
}

