// Fine-tuning: the jobs list (fine-tunes and evaluations) with live status; `#/jobs/new` is the form, `#/jobs/ID` a job's page.

import {get} from "./api.js";
import {badge, fmtDuration, h, hashFor, pageHead, replace, table, timeEl, toDate} from "./dom.js";

export const FINAL = new Set(["Completed", "Failed", "Canceled"]);

export default async function jobs(root, ctx) {
  const id = ctx.route.parts[1];
  if (id === "new") return (await import("./jobform.js")).default(root, ctx);
  if (id) return (await import("./job.js")).default(root, ctx, id);

  root.append(pageHead("Fine-tuning", "Jobs train a base model on your chat data; the list refreshes by itself.",
    h("a", {class: "btn btn-primary", href: "#/jobs/new", "data-needs": "contributor"}, "New fine-tuning job")));
  const host = h("section", {class: "card", "data-testid": "jobs"});
  root.append(host);
  ctx.poll(async () => {
    const rows = await get("/jobs", {signal: ctx.signal});
    replace(host, table([
      {label: "Job", render: (j) => h("a", {href: hashFor("jobs", j.id)}, h("b", {}, j.name || j.id),
        j.name ? h("span", {class: "muted small"}, " " + j.id) : null,
        j.type === "evaluation" ? h("span", {class: "tag"}, " evaluation") : null)},
      {label: "Status", render: (j) => badge(j.status)},
      {label: "Progress", render: progressCell},
      {label: "Base model", render: (j) => h("span", {class: "ellipsis", title: j.base_model}, shortModel(j.base_model))},
      {label: "Created", render: (j) => timeEl(j.created_at)},
      {label: "Duration", render: (j) => fmtDuration(elapsed(j))},
    ], rows, {empty: "No fine-tuning jobs yet. Start one with “New fine-tuning job”."}));
    return true;
  }, () => 2500);
}

export function shortModel(ref) {
  if (!ref) return "–";
  return ref.includes("/") && !ref.includes(":") ? ref.split("/").filter(Boolean).pop() : ref;
}

export function elapsed(job) {
  const start = toDate(job.started_at);
  if (!start) return null;
  const end = toDate(job.finished_at) || new Date();
  return (end - start) / 1000;
}

export function progressCell(job) {
  const p = job.progress || {};
  if (!p.max_steps) return h("span", {class: "muted"}, FINAL.has(job.status) ? "–" : "waiting");
  const frac = Math.min(1, (p.step || 0) / p.max_steps);
  return h("div", {class: "progress-cell"},
    h("div", {class: "bar", role: "progressbar", "aria-valuenow": Math.round(frac * 100), "aria-valuemin": 0, "aria-valuemax": 100},
      h("span", {style: {width: (frac * 100).toFixed(1) + "%"}})),
    h("span", {class: "small muted"}, `${p.step || 0}/${p.max_steps}`));
}
