// Connections: what flows use to reach an endpoint or an API. Secrets come back masked and are only written.

import {can} from "./access.js";
import {del, get, patch, post, seg} from "./api.js";
import {
  busy, button, clear, clearErrors, onSubmit, confirmDialog, field, h, pageHead, replace, showError, table, timeEl, toast,
} from "./dom.js";

export default async function connections(root, ctx) {
  root.append(pageHead("Connections", "Named settings and secrets a flow uses, e.g. an endpoint's scoring URI and key."));
  const listCard = h("section", {class: "card", "data-testid": "connections"});
  const [conns, eps] = await Promise.all([get("/connections", {signal: ctx.signal}), get("/endpoints", {signal: ctx.signal})]);
  const form = connectionForm(ctx, conns, eps);
  form.element.dataset.needs = "contributor";
  root.append(h("div", {class: "grid-2 wide-left"}, listCard, form.element));

  function render(list) {
    replace(listCard, h("h2", {}, "Connections"), table([
      {label: "Name", render: (c) => h("b", {}, c.name)},
      {label: "Type", render: (c) => c.type},
      {label: "Configs", cls: "wrap", render: (c) => pairs(c.configs)},
      {label: "Secrets", cls: "wrap", render: (c) => pairs(c.secrets)},
      {label: "Updated", render: (c) => timeEl(c.updated_at || c.created_at)},
      {label: "", render: (c) => h("span", {class: "row-actions"},
        button("Edit", () => form.edit(c), {kind: "small", needs: "contributor"}), removeButton(c))},
    ], list, {empty: "No connections yet. The bundled flows expect one named custom-phi3 pointing at an endpoint."}));
  }
  function removeButton(c) {
    const b = button("Delete", async () => {
      if (!await confirmDialog(`Delete connection ${c.name}?`, {ok: "Delete", danger: true,
        detail: "Flows that use it fail until it exists again."})) return;
      await busy(b, async () => {
        await del(`/connections/${seg(c.name)}`);
        toast(`Deleted ${c.name}`);
        render(await get("/connections"));
      });
    }, {kind: "small", needs: "contributor"});
    return b;
  }
  form.onSaved = async () => render(await get("/connections", {signal: ctx.signal}));
  render(conns);
}

function pairs(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("span", {class: "muted"}, "none");
  return h("ul", {class: "pairs"}, entries.map(([k, v]) => h("li", {}, h("code", {}, k), " ", h("span", {class: "break"}, String(v)))));
}

function connectionForm(ctx, existing, eps) {
  const name = h("input", {type: "text", name: "name", placeholder: "custom-phi3", autocomplete: "off", spellcheck: "false"});
  const type = h("select", {name: "type"}, ["custom", "open_ai", "azure_open_ai"].map((t) => h("option", {value: t}, t)));
  const fromEp = h("select", {name: "from_endpoint"}, h("option", {value: ""}, "fill from an endpoint…"),
    eps.map((e) => h("option", {value: e.name}, e.name)));
  const configs = pairRows("configs", false);
  const secrets = pairRows("secrets", true);
  const status = h("div", {class: "form-status"});
  const title = h("h2", {}, "New connection");
  const submit = h("button", {type: "submit", class: "btn btn-primary"}, "Save connection");
  const form = h("form", {class: "card form", novalidate: true}, title,
    h("div", {class: "row"}, field("Name", name, {name: "name"}), field("Type", type, {name: "type"})),
    field("From an endpoint", fromEp, {hint: "custom: its scoring URI as configs.endpoint and its primary key as secrets.key; "
      + "open_ai: its OpenAI base URL as base_url and the key as api_key."}),
    h("h3", {}, "Configs"), configs.element, h("h3", {}, "Secrets"), secrets.element,
    h("p", {class: "hint"}, "Secrets are encrypted on the server and never shown again; leave one blank to keep it when editing."),
    status, h("div", {class: "actions"}, button("Clear", () => reset()), submit));
  const api = {element: form, onSaved: null, edit};
  let original = {configs: [], secrets: []};  // the keys of the connection being edited

  // custom: the Azure scoring URI and key (the walkthrough's flow); open_ai: the OpenAI base URL and key (llm nodes)
  async function fill() {
    if (!fromEp.value) return;
    clear(status);
    try {
      const [ep, creds] = await Promise.all([get(`/endpoints/${seg(fromEp.value)}`), get(`/endpoints/${seg(fromEp.value)}/credentials`)]);
      const key = creds.primary_key || creds.access_token || "";
      if (type.value === "open_ai") {
        configs.load({base_url: ep.openai_base_url});
        secrets.load({api_key: key});
      } else {
        type.value = "custom";
        configs.load({endpoint: ep.scoring_uri});
        secrets.load({key});
      }
      if (!name.value) name.value = type.value === "open_ai" ? "forgeflow-endpoint" : "custom-phi3";
    } catch (e) {
      showError(form, e, status);
    }
  }
  fromEp.addEventListener("change", fill);
  type.addEventListener("change", fill);

  function reset() {
    original = {configs: [], secrets: []};
    name.value = ""; name.readOnly = false; type.value = "custom"; fromEp.value = "";
    configs.load({}); secrets.load({});
    title.textContent = "New connection";
    clearErrors(form); clear(status);
  }
  function edit(c) {
    reset();
    name.value = c.name; name.readOnly = true; type.value = c.type;
    configs.load(c.configs || {});
    secrets.load(Object.fromEntries(Object.keys(c.secrets || {}).map((k) => [k, ""])));
    original = {configs: Object.keys(c.configs || {}), secrets: Object.keys(c.secrets || {})};
    title.textContent = `Edit ${c.name}`;
    form.scrollIntoView({block: "nearest"});
  }

  onSubmit(form, status, (e) => {
    const n = name.value.trim();
    if (!n) { showError(form, {field: "name", message: "Give the connection a name."}); return; }
    const editing = name.readOnly || existing.some((c) => c.name === n);
    busy(submit, async () => {
      try {
        if (editing) {
          const secretRows = secrets.values();
          const secretValues = Object.fromEntries(Object.entries(secretRows).filter(([, v]) => v !== ""));
          const configValues = configs.values();
          // rows deleted (or renamed) in the form are dropped on the server too
          const remove = [
            ...original.configs.filter((k) => !(k in configValues)).map((k) => `configs.${k}`),
            ...original.secrets.filter((k) => !(k in secretRows)).map((k) => `secrets.${k}`),
          ];
          await patch(`/connections/${seg(n)}`, {type: type.value, configs: configValues, secrets: secretValues, remove});
        } else {
          await post("/connections", {name: n, type: type.value, configs: configs.values(), secrets: secrets.values()});
          existing.push({name: n});
        }
        toast(`Saved connection ${n}`);
        reset();
        if (api.onSaved) await api.onSaved();
      } catch (err) {
        if (err.name !== "AbortError") showError(form, err, status);
      }
    });
  });
  reset();
  const q = ctx.route.query;
  if (q.get("name")) {
    name.value = q.get("name");
    if (["custom", "open_ai", "azure_open_ai"].includes(q.get("type"))) type.value = q.get("type");
    title.textContent = `New connection ${q.get("name")}`;
    if (eps.length === 1 && can("contributor")) { fromEp.value = eps[0].name; fill(); }  // fill reads the key
    setTimeout(() => fromEp.focus(), 0);
  }
  return api;
}

/** Editable key/value rows; secret values go in password inputs. */
function pairRows(label, secret) {
  const host = h("div", {class: "pairs-edit", dataset: {field: label}});
  const rows = [];
  function addRow(k = "", v = "") {
    const key = h("input", {type: "text", value: k, placeholder: "name", "aria-label": `${label} name`, spellcheck: "false"});
    const val = h("input", {type: secret ? "password" : "text", value: v, placeholder: secret ? "secret value" : "value",
      "aria-label": `${label} value`, autocomplete: secret ? "new-password" : "off", spellcheck: "false"});
    const row = h("div", {class: "pair-row"}, key, val,
      button("×", () => { row.remove(); rows.splice(rows.indexOf(entry), 1); }, {kind: "small", title: "Remove"}));
    const entry = {key, val, row};
    rows.push(entry);
    host.insertBefore(row, add);
    return entry;
  }
  const add = button(`+ Add ${secret ? "a secret" : "a config"}`, () => addRow(), {kind: "small"});
  host.append(add, h("div", {class: "field-error", role: "alert"}));
  return {
    element: host,
    values: () => Object.fromEntries(rows.filter((r) => r.key.value.trim()).map((r) => [r.key.value.trim(), r.val.value])),
    set(k, v) {
      const r = rows.find((x) => x.key.value.trim() === k) || rows.find((x) => !x.key.value.trim()) || addRow();
      r.key.value = k; r.val.value = v;
    },
    load(obj) {
      for (const r of rows.splice(0)) r.row.remove();
      const entries = Object.entries(obj);
      if (!entries.length) addRow();
      for (const [k, v] of entries) addRow(k, String(v));
    },
  };
}
