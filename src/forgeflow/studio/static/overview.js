// Overview: the five steps of the walkthrough, each with where the workspace stands.

import {get} from "./api.js";
import {badge, h, pageHead, replace, table, timeEl} from "./dom.js";

const FINAL = new Set(["Completed", "Failed", "Canceled"]);

async function settle(promise) {
  try { return {value: await promise}; } catch (e) { return {error: e}; }
}

function count(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

export default async function overview(root, ctx) {
  root.append(pageHead("Overview", "Prepare data, fine-tune, register, deploy, then chat with your model."));
  const steps = h("div", {class: "steps"});
  const recent = h("section", {class: "card"});
  const compute = h("section", {class: "card", "data-testid": "compute"});
  root.append(steps, recent, compute);

  const [datasets, jobs, models, endpoints, flows, targets] = await Promise.all([
    settle(get("/datasets", {signal: ctx.signal})), settle(get("/jobs", {signal: ctx.signal})),
    settle(get("/models", {signal: ctx.signal})), settle(get("/endpoints", {signal: ctx.signal})),
    settle(get("/flows", {signal: ctx.signal})), settle(get("/compute", {signal: ctx.signal}))]);
  const say = (r, fn) => (r.error ? `could not load: ${r.error.message}` : fn(r.value));

  const card = (n, title, text, status, href, action) => h("a", {class: "step", href},
    h("span", {class: "step-n"}, n), h("div", {},
      h("h2", {}, title), h("p", {class: "muted"}, text), h("p", {class: "step-status"}, status),
      h("span", {class: "step-go"}, action + " →")));

  replace(steps,
    card(1, "Prepare data", "Chat datasets in the workspace, checked row by row.",
      say(datasets, (d) => count(d.length, "dataset", "datasets")), "#/datasets", "Datasets"),
    card(2, "Fine-tune", "A base model, your data and LoRA settings; watch the loss fall.",
      say(jobs, (js) => {
        const live = js.filter((j) => !FINAL.has(j.status)).length;
        const done = js.filter((j) => j.status === "Completed").length;
        return `${count(js.length, "job", "jobs")}: ${live} active, ${done} completed`;
      }), "#/jobs", "Fine-tuning"),
    card(3, "Register", "A completed job's output becomes a versioned model.",
      say(models, (ms) => {
        const reg = ms.filter((m) => m.kind !== "base");
        return `${count(new Set(reg.map((m) => m.name)).size, "model", "models")}, ${count(reg.length, "version", "versions")}`;
      }), "#/models", "Models"),
    card(4, "Deploy", "An endpoint with keys, deployments and traffic.",
      say(endpoints, (es) => count(es.length, "endpoint", "endpoints")), "#/endpoints", "Endpoints"),
    card(5, "Chat", "Connect a flow to the endpoint, or chat with it directly.",
      say(flows, (fs) => count(fs.length, "flow", "flows")), "#/playground", "Playground"));

  recent.append(h("h2", {}, "Recent fine-tuning jobs"));
  if (jobs.error) recent.append(h("p", {class: "muted"}, jobs.error.message));
  else if (!jobs.value.length) recent.append(h("p", {class: "muted"}, "None yet. ", h("span", {"data-needs": "contributor"}, h("a", {href: "#/jobs/new"}, "Start one"), ".")));
  else {
    recent.append(h("ul", {class: "plain-list"}, jobs.value.slice(0, 5).map((j) =>
      h("li", {}, h("a", {href: `#/jobs/${encodeURIComponent(j.id)}`}, j.name || j.id), " ", badge(j.status), " ",
        h("span", {class: "muted"}, timeEl(j.created_at))))));
  }

  compute.append(h("h2", {}, "Compute"));
  if (targets.error) compute.append(h("p", {class: "muted"}, targets.error.message));
  else compute.append(table([
    {label: "Target", render: (t) => t.name},
    {label: "Where", render: (t) => (t.type === "ray" ? `Ray cluster at ${t.address}` : "this machine")},
    {label: "Jobs", render: (t) => `${t.running_jobs} running, ${t.queued_jobs} queued`},
    {label: "Nodes", render: clusterCell},
  ], targets.value));
}

/** A Ray cluster's nodes, live (the same counts as `forgeflow compute list`), or why it could not be read. */
function clusterCell(t) {
  const c = t.cluster;
  if (!c) return "–";
  if (!c.reachable) return h("span", {title: c.error}, badge("unreachable", "bad"));
  const cpus = c.cpus_free === null ? `${c.cpus} CPUs` : `${c.cpus_free} of ${c.cpus} CPUs free`;
  const pending = c.pending ? `, ${count(c.pending, "node", "nodes")} coming up` : "";
  return `${count(c.nodes_alive, "node", "nodes")} (${count(c.workers_alive, "worker", "workers")}), ${cpus}` +
    (c.gpus ? `, ${c.gpus} GPUs` : "") + pending;
}
