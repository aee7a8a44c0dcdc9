// Models: registered versions (with aliases, source job, settings and newest evaluation), registering a completed
// job's output, and the base-model catalog.

import {can} from "./access.js";
import {get, patch, post, seg} from "./api.js";
import {
  badge, busy, button, clear, onSubmit, empty, errorBox, field, fmtBytes, fmtNum, fmtTime, h, hashFor, kv,
  pageHead, replace, showError, table, timeEl, toast,
} from "./dom.js";
import {summaryCard} from "./evaluation.js";
import {shortModel} from "./jobs.js";

export default async function models(root, ctx) {
  const name = ctx.route.parts[1];
  if (name) return modelPage(root, ctx, name);

  root.append(pageHead("Models", "Registered models are versioned in the MLflow registry; base models are what you fine-tune."));
  const [all, jobs] = await Promise.all([
    get("/models", {query: {include_archived: true}, signal: ctx.signal}), get("/jobs", {signal: ctx.signal})]);
  const registered = all.filter((m) => m.kind !== "base");
  const base = all.filter((m) => m.kind === "base");

  const regCard = h("section", {class: "card", "data-testid": "registered"}, h("h2", {}, "Registered models"));
  const names = [...new Set(registered.map((m) => m.name))].sort();
  if (!names.length) regCard.append(empty("None yet: register a completed fine-tuning job's output below."));
  for (const n of names) {
    const versions = registered.filter((m) => m.name === n).sort((a, b) => Number(b.version) - Number(a.version));
    regCard.append(h("div", {class: "model-group"},
      h("h3", {}, h("a", {href: hashFor("models", n)}, n), h("span", {class: "muted small"}, ` ${versions.length} version${versions.length > 1 ? "s" : ""}`)),
      versionTable(versions)));
  }

  const form = registerForm(ctx, jobs, names);
  const baseCard = h("section", {class: "card"}, h("h2", {}, "Base models"), table([
    {label: "Name", render: (m) => h("b", {}, m.name)},
    {label: "About", cls: "wrap", render: (m) => m.description || ""},
    {label: "State", render: (m) => (m.pulled ? badge("Ready", "ok") : badge("not pulled", "off"))},
    {label: "", render: (m) => (m.pulled ? h("a", {class: "btn btn-small", href: `#/jobs/new?model=${encodeURIComponent(m.name)}`,
      "data-needs": "contributor"}, "Fine-tune")
      : pullButton(m))},
  ], base, {empty: "The catalog is empty."}));
  root.append(regCard, h("div", {class: "grid-2"}, form, baseCard));
  if (ctx.route.query.get("from_job")) {
    form.scrollIntoView({block: "center"});
    form.querySelector("input[name=name]").focus();
  }
}

function versionTable(versions) {
  return table([
    {label: "Version", render: (v) => h("a", {href: `${hashFor("models", v.name)}?version=${encodeURIComponent(v.version)}`}, `v${v.version}`)},
    {label: "Aliases", render: (v) => aliasTags(v)},
    {label: "Source job", render: (v) => (v.source_job ? h("a", {href: hashFor("jobs", v.source_job)}, v.source_job) : "–")},
    {label: "Base model", render: (v) => h("span", {title: v.base_model || ""}, shortModel(v.base_model))},
    {label: "Train / val loss", render: (v) => (v.metrics ? `${fmtNum(v.metrics.train_loss)} / ${fmtNum(v.metrics.eval_loss)}` : "–")},
    {label: "Registered", render: (v) => timeEl(v.created_at)},
    {label: "", render: (v) => h("span", {class: "row-actions"},
      v.archived ? badge("Archived") : h("a", {class: "btn btn-small", "data-needs": "contributor",
        href: `#/endpoints?deploy=${encodeURIComponent(`${v.name}:${v.version}`)}`}, "Deploy"))},
  ], versions);
}

// An alias (champion) names one version; NAME@ALIAS deploys the version it names then.
function aliasTags(v) {
  return (v.aliases || []).length ? v.aliases.map((a) => h("span", {class: "tag", title: `${v.name}@${a}`}, `@${a}`)) : "–";
}

function pullButton(m) {
  const b = button("Pull", async () => {
    await busy(b, async () => {
      b.textContent = "Pulling…";
      await post("/models/pull", {name: m.name});
      toast(`Pulled ${m.name}`);
      location.reload();
    });
  }, {kind: "small", needs: "contributor"});
  return b;
}

function registerForm(ctx, jobs, existing) {
  const done = jobs.filter((j) => j.status === "Completed");
  const fromJob = ctx.route.query.get("from_job");
  const picked = done.find((j) => j.id === fromJob);
  const job = h("select", {name: "from_job"}, h("option", {value: ""}, done.length ? "Choose a completed job…" : "no completed jobs yet"),
    done.map((j) => h("option", {value: j.id, selected: j.id === fromJob}, `${j.name || j.id} · ${j.id}`)));
  const suggestion = (j) => (j && j.name ? j.name.replace(/[^A-Za-z0-9_.-]+/g, "-") : "");
  const name = h("input", {type: "text", name: "name", list: "model-names", autocomplete: "off", spellcheck: "false",
    value: suggestion(picked), placeholder: "e.g. quill-chat"});
  const names = h("datalist", {id: "model-names"}, existing.map((n) => h("option", {value: n})));
  const description = h("input", {type: "text", name: "description", placeholder: "optional"});
  job.addEventListener("change", () => {
    const j = done.find((x) => x.id === job.value);
    if (j && !name.value) name.value = suggestion(j);
  });
  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn btn-primary"}, "Register");
  const form = h("form", {class: "card form", id: "register", novalidate: true, "data-needs": "contributor"},
    h("h2", {}, "Register a job's output"),
    field("Completed job", job, {name: "from_job"}),
    field("Model name", h("div", {}, name, names), {name: "name",
      hint: "A new name starts at version 1; an existing name gets the next version."}),
    field("Description", description, {name: "description"}),
    status, h("div", {class: "actions"}, submit));
  onSubmit(form, status, (e) => {
    if (!job.value) { showError(form, {field: "from_job", message: "Choose a completed job."}); return; }
    if (!name.value.trim()) { showError(form, {field: "name", message: "Give the model a name."}); return; }
    busy(submit, async () => {
      submit.textContent = "Registering…";
      try {
        const v = await post("/models", {name: name.value.trim(), from_job: job.value,
          description: description.value.trim() || null}, {signal: ctx.signal});
        toast(`Registered ${v.name} version ${v.version}`);
        location.hash = `${hashFor("models", v.name)}?version=${encodeURIComponent(v.version)}`;
      } catch (err) {
        if (err.name !== "AbortError") showError(form, err, status);
      }
    });
  });
  return form;
}

async function modelPage(root, ctx, name) {
  const all = await get("/models", {query: {include_archived: true}, signal: ctx.signal});
  const versions = all.filter((m) => m.kind !== "base" && m.name === name).sort((a, b) => Number(b.version) - Number(a.version));
  root.append(pageHead(name, h("span", {}, h("a", {href: "#/models"}, "Models"), " / ", name)));
  if (!versions.length) {
    root.append(errorBox(`No registered model named ${name}.`));
    return;
  }
  const wanted = ctx.route.query.get("version") || versions[0].version;
  const v = versions.find((x) => x.version === wanted) || versions[0];
  root.append(h("nav", {class: "tabs"}, versions.map((x) => h("a", {class: ["tab", x.version === v.version && "active"],
    href: `${hashFor("models", name)}?version=${encodeURIComponent(x.version)}`}, `v${x.version}`, x.archived ? " (archived)" : ""))));

  const errorSlot = h("div");
  const archive = button(v.archived ? "Restore" : "Archive", async () => {
    await busy(archive, async () => {
      await post(`/models/${seg(name)}/versions/${seg(v.version)}/${v.archived ? "restore" : "archive"}`);
      toast(v.archived ? "Restored" : "Archived: hidden from lists, no new deployments");
      location.reload();
    }, errorSlot);
  }, {kind: v.archived ? "" : "danger", needs: "contributor"});
  const desc = h("input", {type: "text", value: v.description || "", placeholder: "no description", "aria-label": "Description",
    readOnly: !can("contributor")});
  const saveDesc = button("Save", async () => {
    await busy(saveDesc, async () => {
      await patch(`/models/${seg(name)}/versions/${seg(v.version)}`, {description: desc.value});
      toast("Saved");
    }, errorSlot);
  }, {kind: "small", needs: "contributor"});

  const info = h("section", {class: "card"},
    h("div", {class: "card-head"}, h("h2", {}, `Version ${v.version} `, v.archived ? badge("Archived") : null),
      h("div", {class: "actions"}, v.archived ? null : h("a", {class: "btn btn-primary", "data-needs": "contributor",
        href: `#/endpoints?deploy=${encodeURIComponent(`${name}:${v.version}`)}`}, "Deploy"), archive)),
    errorSlot,
    kv([
      ["Description", h("span", {class: "inline-edit"}, desc, saveDesc)],
      ["Source job", v.source_job ? h("a", {href: hashFor("jobs", v.source_job)}, v.source_job) : "–"],
      ["Base model", h("span", {title: v.base_model || ""}, v.base_model || "–")],
      ["Aliases", aliasTags(v)],
      ["Registered", fmtTime(v.created_at)],
      ["MLflow run", v.run_id ? h("code", {}, v.run_id) : "–"],
      ["Path", h("code", {class: "break"}, v.path)],
      ["Tags", Object.keys(v.tags || {}).length ? Object.entries(v.tags).map(([k, t]) => h("span", {class: "tag"}, `${k}=${t}`)) : "none"],
    ]));
  const settings = h("section", {class: "card"}, h("h2", {}, "Settings"),
    v.hyperparameters ? kv(Object.entries(v.hyperparameters).map(([k, x]) => [h("code", {}, k), x === null ? "none" : String(x)]))
      : h("p", {class: "muted"}, "Registered from a folder: no training settings."));
  const metrics = h("section", {class: "card"}, h("h2", {}, "Training metrics"),
    v.metrics ? kv(Object.entries(v.metrics).map(([k, x]) => [h("code", {}, k), fmtNum(x)]))
      : h("p", {class: "muted"}, "None recorded."));
  const files = h("section", {class: "card"}, h("h2", {}, "Files"));
  root.append(...[info, v.evaluation ? summaryCard(v.evaluation) : null,
    h("div", {class: "grid-2"}, settings, h("div", {class: "stack"}, metrics, files))].filter(Boolean));
  try {
    const listing = await get(`/models/${seg(name)}/versions/${seg(v.version)}/files`, {signal: ctx.signal});
    files.append(table([
      {label: "File", render: (f) => h("code", {}, f.path)},
      {label: "Size", cls: "num", render: (f) => fmtBytes(f.size)},
    ], listing.files.slice(0, 50)), h("p", {class: "muted small"}, `${listing.files.length} files, ${fmtBytes(listing.total_bytes)}`));
  } catch (e) {
    if (e.name !== "AbortError") files.append(errorBox(e));
  }
}
