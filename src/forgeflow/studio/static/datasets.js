// Datasets: the workspace's training files, upload, prepare from the sample, validation and a preview. A file is
// checked as the rows of a training method (`?method=`): chat rows for sft (the default), preference rows for dpo.

import {api, del, get, post, seg} from "./api.js";
import {
  badge, busy, button, clear, onSubmit, confirmDialog, copyButton, empty, errorBox, field, fmtBytes,
  fmtNum, h, hashFor, kv, pageHead, replace, showError, table, tabs, timeEl, toast,
} from "./dom.js";

const PAGE = 20;
// The training methods a file can be checked for, and what each calls its rows.
const METHODS = {sft: "Chat rows (sft)", dpo: "Preference rows (dpo)"};
const SHAPES = {sft: "a chat row with 'messages'", dpo: "a preference row with 'prompt', 'chosen' and 'rejected'"};

const methodOf = (ctx) => (ctx.route.query.get("method") === "dpo" ? "dpo" : "sft");
const datasetHash = (name, method) => hashFor("datasets", name) + (method === "dpo" ? "?method=dpo" : "");

export default async function datasets(root, ctx) {
  const name = ctx.route.parts[1];
  if (name) return detail(root, ctx, name);
  return list(root, ctx);
}

// ---- list, upload, prepare ----------------------------------------------------------------------

async function list(root, ctx) {
  root.append(pageHead("Datasets", "Training data in the workspace: one conversation per row (a list of messages), "
    + "or one preference per row (a prompt with a chosen and a rejected answer) for DPO."));
  const body = h("div", {class: "grid-2"});
  const listCard = h("section", {class: "card span-2"});
  root.append(body);
  body.append(listCard, uploadForm(ctx), prepareForm(ctx));

  const rows = await get("/datasets", {signal: ctx.signal});
  listCard.append(h("h2", {}, "In this workspace"));
  listCard.append(table([
    {label: "Name", render: (d) => h("a", {href: hashFor("datasets", d.name)}, d.name)},
    {label: "Format", render: (d) => d.format},
    {label: "Rows", cls: "num", render: (d) => (d.rows === null ? "?" : fmtNum(d.rows))},
    {label: "Size", cls: "num", render: (d) => fmtBytes(d.bytes)},
    {label: "Modified", render: (d) => timeEl(d.modified)},
  ], rows, {empty: "No datasets yet: upload a chat file or prepare one from the bundled sample."}));
}

function uploadForm(ctx) {
  const file = h("input", {type: "file", name: "file", accept: ".jsonl,.json,.csv,.parquet", required: true});
  const name = h("input", {type: "text", name: "name", placeholder: "train.jsonl", spellcheck: "false", autocomplete: "off"});
  const overwrite = h("input", {type: "checkbox", name: "overwrite"});
  const method = h("select", {name: "method"}, Object.entries(METHODS).map(([id, label]) => h("option", {value: id}, label)));
  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn btn-primary"}, "Upload");
  const drop = h("div", {class: "dropzone"}, h("p", {}, "Drop a .jsonl, .json, .csv or .parquet file here, or choose one:"), file);
  const form = h("form", {class: "card form", novalidate: true, "data-needs": "contributor"},
    h("h2", {}, "Upload a file"),
    field("File", drop, {name: "body"}),
    field("Dataset name", name, {name: "name", hint: "The file name in the workspace; jobs refer to it by path."}),
    field("Rows", method, {name: "method", hint: "Chat rows train with supervised fine-tuning, preference rows with DPO."}),
    h("label", {class: "check"}, overwrite, " Replace a dataset of the same name"),
    status, h("div", {class: "actions"}, submit));

  file.addEventListener("change", () => {
    if (file.files[0] && !name.value) name.value = file.files[0].name;
  });
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) {
      file.files = e.dataTransfer.files;
      name.value = e.dataTransfer.files[0].name;
    }
  });

  onSubmit(form, status, (e) => {
    const f = file.files[0];
    if (!f) { showError(form, {field: "body", message: "Choose a file to upload."}); return; }
    const target = (name.value || f.name).trim();
    busy(submit, async () => {
      submit.textContent = "Uploading…";
      try {
        const ds = await api("PUT", `/datasets/${seg(target)}`,
          {raw: f, query: {overwrite: overwrite.checked, method: method.value}, signal: ctx.signal});
        toast(`Uploaded ${ds.name}`);
        location.hash = datasetHash(ds.name, method.value);
      } catch (err) {
        if (err.name === "AbortError") return;
        showError(form, err, status);
      }
    });
  });
  return form;
}

function prepareForm(ctx) {
  const source = h("input", {type: "text", name: "dataset", value: "sample", spellcheck: "false"});
  const prefix = h("input", {type: "text", name: "prefix", value: "quill", spellcheck: "false"});
  const testSize = h("input", {type: "number", name: "test_size", value: "0.2", step: "0.05", min: "0.01"});
  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn"}, "Prepare");
  const form = h("form", {class: "card form", novalidate: true, "data-needs": "contributor"},
    h("h2", {}, "Prepare a train / test split"),
    field("Source", source, {name: "dataset", hint: "'sample' is the bundled chat dataset; a local file or folder also works."}),
    h("div", {class: "row"},
      field("Prefix", prefix, {name: "prefix", hint: "Writes <prefix>_train.jsonl and <prefix>_test.jsonl."}),
      field("Test share", testSize, {name: "test_size", hint: "A fraction, or a row count."})),
    status, h("div", {class: "actions"}, submit));
  onSubmit(form, status, (e) => {
    busy(submit, async () => {
      submit.textContent = "Preparing…";
      try {
        const out = await post("/datasets/prepare", {dataset: source.value.trim(), prefix: prefix.value.trim(),
          test_size: Number(testSize.value)}, {signal: ctx.signal});
        toast(`Wrote ${out.train.name} (${out.train.rows} rows) and ${out.test.name} (${out.test.rows} rows)`);
        location.hash = hashFor("datasets", out.train.name);
      } catch (err) {
        if (err.name !== "AbortError") showError(form, err, status);
      }
    });
  });
  return form;
}

// ---- one dataset ----------------------------------------------------------------------------------

function problemText(p) {
  if (typeof p === "string") return {where: "", message: p};
  const where = p.unit === "file" || !p.line ? "file" : `${p.unit || "line"} ${p.line}`;
  return {where, message: p.message};
}

async function detail(root, ctx, name) {
  const method = methodOf(ctx);
  const ds = await get(`/datasets/${seg(name)}`, {query: {method}, signal: ctx.signal});
  const v = ds.validation || {};
  const del_ = button("Delete", async () => {
    if (!await confirmDialog(`Delete dataset ${ds.name}?`, {ok: "Delete", danger: true,
      detail: "Jobs that already used it keep their results."})) return;
    await busy(del_, async () => {
      await del(`/datasets/${seg(ds.name)}`);
      toast(`Deleted ${ds.name}`);
      location.hash = "#/datasets";
    });
  }, {kind: "danger", needs: "contributor"});
  root.append(pageHead(ds.name, h("span", {}, h("a", {href: "#/datasets"}, "Datasets"), " / ", ds.name),
    h("a", {class: "btn btn-primary", href: `#/jobs/new?training_data=${encodeURIComponent(ds.path)}`, "data-needs": "contributor"},
      "Fine-tune with it"),
    del_));
  root.append(tabs(Object.entries(METHODS).map(([id, label]) => ({id, label, href: datasetHash(ds.name, id)})), method));

  const problems = v.problems || [];
  const summary = h("section", {class: "card"},
    h("h2", {}, "Validation ", v.ok ? badge("Valid", "ok") : badge(`${v.bad_rows ?? problems.length} bad`, "bad")),
    h("p", {class: "muted"}, `Checked as ${METHODS[method].toLowerCase()}.`),
    kv([
      ["Rows", fmtNum(v.rows)], ["Good rows", fmtNum(v.good_rows)], ["Bad rows", fmtNum(v.bad_rows)],
      v.mean_turns !== undefined ? [method === "dpo" ? "Messages per row (prompt + chosen)" : "Messages per row",
        fmtNum(v.mean_turns)] : null,
      v.lengths ? [`Length (${v.length_unit || "chars"})`,
        `min ${v.lengths.min} · median ${v.lengths.p50} · p95 ${v.lengths.p95} · max ${v.lengths.max}`] : null,
      ["Format", ds.format], ["Size", fmtBytes(ds.bytes)], ["Modified", timeEl(ds.modified)],
      ["Path", h("span", {class: "path"}, h("code", {}, ds.path), " ", copyButton(ds.path))],
    ]));
  const fits = v.fits_method && METHODS[v.fits_method] ? h("p", {class: "hint", "data-testid": "fits-method"},
    `Every row is ${SHAPES[v.fits_method]}: `,
    h("a", {href: datasetHash(ds.name, v.fits_method)}, `check it as ${METHODS[v.fits_method].toLowerCase()}`)) : null;
  const problemsCard = h("section", {class: "card", "data-testid": "problems"},
    h("h2", {}, problems.length ? `Problems (${problems.length}${v.truncated ? "+" : ""})` : "Problems"),
    fits,
    problems.length
      ? h("ol", {class: "problems"}, problems.map((p) => {
        const t = problemText(p);
        return h("li", {}, t.where ? h("span", {class: "where"}, t.where) : null, h("span", {}, t.message));
      }))
      : h("p", {class: "muted"}, method === "dpo" ? "None: every row is a valid preference." :
        "None: every row is a valid conversation."),
    v.truncated ? h("p", {class: "muted"}, "Only the first problems are listed.") : null);
  root.append(h("div", {class: "grid-2"}, summary, problemsCard));

  const preview = h("section", {class: "card"});
  root.append(preview);
  await rows(preview, ctx, ds.name, 0, method);
}

async function rows(host, ctx, name, offset, method) {
  let page;
  try {
    page = await get(`/datasets/${seg(name)}/rows`, {query: {offset, limit: PAGE, method}, signal: ctx.signal});
  } catch (e) {
    if (e.name === "AbortError") return;
    replace(host, h("h2", {}, "Rows"), errorBox(e));
    return;
  }
  const total = page.total;
  const nav = h("div", {class: "pager"},
    button("← Previous", () => rows(host, ctx, name, Math.max(0, offset - PAGE), method), {disabled: offset === 0}),
    h("span", {class: "muted"}, total ? `rows ${offset + 1}–${Math.min(total, offset + PAGE)} of ${fmtNum(total)}` : "no rows"),
    button("Next →", () => rows(host, ctx, name, offset + PAGE, method), {disabled: offset + PAGE >= total}));
  replace(host, h("div", {class: "card-head"}, h("h2", {}, "Rows"), nav),
    page.rows.length ? h("div", {class: "convos"}, page.rows.map(conversation)) : empty("This file has no rows."));
}

function bubble(m, label) {
  const role = m && typeof m === "object" ? String(m.role ?? "?") : "?";
  const content = m && typeof m === "object" ? m.content : m;
  return h("div", {class: ["bubble", "role-" + (["system", "user", "assistant"].includes(role) ? role : "other"),
    label && `answer-${label}`]},
    h("span", {class: "role"}, label ? `${role} · ${label}` : role),
    h("div", {class: "text"}, typeof content === "string" ? content : JSON.stringify(content)));
}

function conversation(row) {
  // A preference row: its prompt, then the chosen and the rejected answer, each labelled.
  const pair = Array.isArray(row.prompt);
  const msgs = pair ? [] : Array.isArray(row.messages) ? row.messages : [];
  return h("article", {class: ["convo", row.error && "bad", pair && "pair"]},
    h("header", {}, h("span", {class: "where"}, `${row.unit || "line"} ${row.line}`),
      row.error ? h("span", {class: "convo-error"}, row.error) : null),
    pair ? [row.prompt.map((m) => bubble(m)), (row.chosen || []).map((m) => bubble(m, "chosen")),
      (row.rejected || []).map((m) => bubble(m, "rejected"))] : msgs.map((m) => bubble(m)),
    !pair && !msgs.length && !row.error ? h("p", {class: "muted"}, "(no messages)") : null);
}

