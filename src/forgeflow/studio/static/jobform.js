// The fine-tuning form: model and data up front, the common settings, every other setting under Advanced.
// Only settings changed from their defaults are sent; the server validates and names the field at fault.

import {get, post} from "./api.js";
import {clear, onSubmit, field, h, hashFor, pageHead, showError, toast} from "./dom.js";

export default async function jobForm(root, ctx) {
  root.append(pageHead("New fine-tuning job", h("span", {}, h("a", {href: "#/jobs"}, "Fine-tuning"), " / new")));
  const [hp, models, datasets, compute] = await Promise.all([
    get("/hyperparameters", {signal: ctx.signal}), get("/models", {signal: ctx.signal}),
    get("/datasets", {signal: ctx.signal}), get("/compute", {signal: ctx.signal})]);
  const q = ctx.route.query;

  const name = h("input", {type: "text", name: "name", placeholder: "optional, e.g. quill-lora", autocomplete: "off"});
  const modelList = h("datalist", {id: "model-options"}, models.map((m) =>
    h("option", {value: m.kind === "base" ? m.name : `${m.name}:${m.version}`},
      m.kind === "base" ? (m.pulled ? "base model" : "base model, not pulled yet") : "registered")));
  const model = h("input", {type: "text", name: "model", list: "model-options", required: true, spellcheck: "false",
    autocomplete: "off", value: q.get("model") || "", placeholder: "smollm2-135m-instruct, a folder, or name:version"});

  const dataOptions = (withNone) => {
    const opts = datasets.map((d) => h("option", {value: d.path}, `${d.name} (${d.rows ?? "?"} rows)`));
    return withNone ? [h("option", {value: ""}, "(none)"), ...opts] : [h("option", {value: ""}, "Choose a dataset…"), ...opts];
  };
  const training = h("select", {name: "training_data", required: true}, dataOptions(false));
  const validation = h("select", {name: "validation_data"}, dataOptions(true));
  for (const [sel, key] of [[training, "training_data"], [validation, "validation_data"]]) {
    const wanted = q.get(key);
    if (wanted && ![...sel.options].some((o) => o.value === wanted)) sel.append(h("option", {value: wanted}, wanted));
    if (wanted) sel.value = wanted;
  }
  if (!q.get("validation_data") && q.get("training_data")) {
    // a prepared pair: <prefix>_train.jsonl goes with <prefix>_test.jsonl
    const test = q.get("training_data").replace(/_train\.jsonl$/, "_test.jsonl");
    if (test !== q.get("training_data") && datasets.some((d) => d.path === test)) validation.value = test;
  }
  const computeSel = h("select", {name: "compute"}, compute.map((c) =>
    h("option", {value: c.name}, `${c.name} (${c.type}, ${c.running_jobs} running)`)));

  const controls = new Map();
  const hpField = (p) => {
    let control;
    if (p.type === "boolean") {
      control = h("input", {type: "checkbox", name: p.name, checked: !!p.default});
    } else if (p.type === "choice") {
      control = h("select", {name: p.name}, p.choices.map((c) => h("option", {value: c, selected: c === p.default}, c)));
    } else if (p.type === "integer" || p.type === "number") {
      control = h("input", {type: "number", name: p.name, step: p.type === "integer" ? "1" : "any",
        value: p.default === null ? "" : String(p.default), placeholder: p.nullable ? "none" : null});
    } else {
      control = h("input", {type: "text", name: p.name, value: p.default === null ? "" : String(p.default),
        placeholder: p.nullable ? "none" : null, spellcheck: "false"});
    }
    controls.set(p.name, {p, control});
    const hint = [p.description, p.valid ? `(${p.valid})` : ""].filter(Boolean).join(" ");
    if (p.type === "boolean") {
      return h("div", {class: "field field-check", dataset: {field: p.name}},
        h("label", {class: "check"}, control, " ", h("code", {}, p.name)),
        h("div", {class: "hint"}, hint), h("div", {class: "field-error", role: "alert"}));
    }
    return field(h("code", {}, p.name), control, {name: p.name, hint});
  };
  const common = hp.filter((p) => p.common);
  const advanced = hp.filter((p) => !p.common);

  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn btn-primary"}, "Start fine-tuning");
  const form = h("form", {class: "form job-form", novalidate: true},
    h("section", {class: "card"},
      h("h2", {}, "Model and data"),
      h("div", {class: "fields-2"},
        field("Base model", h("div", {}, model, modelList), {name: "model",
          hint: "A catalog name, a local Hugging Face folder, or a registered model as name:version."}),
        field("Job name", name, {name: "name"}),
        field("Training data", training, {name: "training_data", hint: datasets.length ? null
          : h("span", {}, "No datasets yet: ", h("a", {href: "#/datasets"}, "upload or prepare one"), ".")}),
        field("Validation data", validation, {name: "validation_data", hint: "Optional: gives the validation loss curve."}),
        field("Compute", computeSel, {name: "compute"}))),
    h("section", {class: "card"},
      h("h2", {}, "Settings"),
      h("div", {class: "fields-3"}, common.map(hpField)),
      h("details", {class: "advanced"},
        h("summary", {}, `Advanced (${advanced.length} more settings)`),
        h("div", {class: "fields-3"}, advanced.map(hpField)))),
    status,
    h("div", {class: "actions form-actions"}, h("a", {class: "btn", href: "#/jobs"}, "Cancel"), submit));
  root.append(form);

  onSubmit(form, status, async (e) => {
    const hyperparameters = {};
    for (const [key, {p, control}] of controls) {
      let value;
      if (p.type === "boolean") value = control.checked;
      else if (p.type === "integer" || p.type === "number") {
        if (control.validity.badInput) {
          showError(form, {field: key, message: `${key} must be ${p.valid || "a number"}`});
          return;
        }
        value = control.value.trim() === "" ? null : Number(control.value);
      } else value = control.value.trim() === "" ? null : control.value.trim();
      if (value === null && !p.nullable && p.type !== "string") {
        showError(form, {field: key, message: `${key} needs a value (${p.valid || p.type})`});
        return;
      }
      if (value !== p.default) hyperparameters[key] = value;
    }
    const missing = !model.value.trim() ? ["model", "Choose a base model."]
      : !training.value ? ["training_data", "Choose the training data."] : null;
    if (missing) { showError(form, {field: missing[0], message: missing[1]}); return; }
    const body = {type: "finetuning", model: model.value.trim(), training_data: training.value,
      validation_data: validation.value || null, compute: computeSel.value, hyperparameters};
    if (name.value.trim()) body.name = name.value.trim();
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      const job = await post("/jobs", body, {signal: ctx.signal});
      toast(`Started ${job.name || job.id}`);
      location.hash = hashFor("jobs", job.id);
    } catch (err) {
      if (err.name === "AbortError") return;
      showError(form, err, status);
    } finally {
      submit.disabled = false;
      submit.textContent = "Start fine-tuning";
    }
  });
}
