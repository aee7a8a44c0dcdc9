// Element building and small shared widgets. Text from the server only ever goes in as text nodes or
// attribute values, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";
const PROPS = new Set(["value", "checked", "disabled", "selected", "hidden", "open", "readOnly", "indeterminate"]);

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") for (const [type, fn] of Object.entries(v)) el.addEventListener(type, fn);
    else if (k === "class") el.setAttribute("class", Array.isArray(v) ? v.filter(Boolean).join(" ") : v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** h("div", {class: "x", on: {click}}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// ---- formatting -------------------------------------------------------------------------------

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

export function fmtNum(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hrs = Math.floor(m / 60);
  return `${hrs}h ${String(m % 60).padStart(2, "0")}m`;
}

/** A Date from an ISO string or epoch seconds / milliseconds. */
export function toDate(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return new Date(t > 1e12 ? t : t * 1000);
  const d = new Date(t);
  return isNaN(d) ? null : d;
}

export function ago(t) {
  const d = toDate(t);
  if (!d) return "–";
  const s = (Date.now() - d.getTime()) / 1000;
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return d.toLocaleDateString(undefined, {year: "numeric", month: "short", day: "numeric"});
}

export function fmtTime(t) {
  const d = toDate(t);
  return d ? d.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"}) : "–";
}

export function timeEl(t) {
  const d = toDate(t);
  return h("time", {datetime: d ? d.toISOString() : null, title: fmtTime(t)}, ago(t));
}

// ---- widgets ----------------------------------------------------------------------------------

const STATUS_TONE = {
  Completed: "ok", Succeeded: "ok", Ready: "ok", ok: "ok",
  Running: "busy", Starting: "busy", Finalizing: "busy", Creating: "busy", Updating: "busy", Queued: "wait",
  CancelRequested: "wait", Deleting: "wait", Canceled: "off", Failed: "bad", Unhealthy: "bad", Archived: "off",
};

export function badge(status, tone) {
  return h("span", {class: ["badge", "tone-" + (tone || STATUS_TONE[status] || "off")]}, status);
}

export function spinner(label) {
  return h("span", {class: "spinner", role: "status", "aria-label": label || "working"});
}

/** A page heading with optional trailing actions. */
export function pageHead(title, sub, ...actions) {
  return h("header", {class: "page-head"},
    h("div", {}, h("h1", {}, title), sub ? h("p", {class: "sub"}, sub) : null),
    actions.length ? h("div", {class: "actions"}, actions) : null);
}

export function errorBox(err) {
  return h("div", {class: "alert alert-bad", role: "alert"}, err && err.message ? err.message : String(err));
}

export function note(text, tone = "info") {
  return h("div", {class: "alert alert-" + tone}, text);
}

export function empty(text, ...actions) {
  return h("div", {class: "empty"}, h("p", {}, text), actions.length ? h("div", {class: "actions"}, actions) : null);
}

/** A button; `needs` ("contributor" | "owner") hides it from lower roles (see access.js). */
export function button(label, onClick, {kind = "", type = "button", title, disabled, testid, needs} = {}) {
  return h("button", {type, class: ["btn", kind && "btn-" + kind], title, disabled,
    "data-testid": testid, "data-needs": needs, on: onClick ? {click: onClick} : null}, label);
}

export function link(label, href, cls) {
  return h("a", {href, class: cls}, label);
}

/** Run an async action from a button: disabled while it runs, errors shown in `errorSlot`. */
export async function busy(btn, fn, errorSlot) {
  const label = btn.textContent;
  btn.disabled = true;
  btn.classList.add("is-busy");
  if (errorSlot) clear(errorSlot);
  try {
    return await fn();
  } catch (e) {
    if (errorSlot) replace(errorSlot, errorBox(e));
    else toast(e.message || String(e), "bad");
    return undefined;
  } finally {
    btn.disabled = false;
    btn.classList.remove("is-busy");
    btn.textContent = label;
  }
}

export function copyButton(getText, label = "Copy") {
  const btn = h("button", {type: "button", class: "btn btn-small", title: "Copy to the clipboard"}, label);
  btn.addEventListener("click", async () => {
    let text;
    try {
      text = typeof getText === "function" ? await getText() : getText;
    } catch (e) {
      toast(`Nothing copied: ${e.message || e}`, "bad");
      return;
    }
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = h("textarea", {style: {position: "fixed", opacity: "0"}}, text);
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    btn.textContent = "Copied";
    setTimeout(() => { btn.textContent = label; }, 1200);
  });
  return btn;
}

let toastHost = null;
export function toast(message, tone = "ok") {
  if (!toastHost) {
    toastHost = h("div", {class: "toasts", "aria-live": "polite"});
    document.body.append(toastHost);
  }
  const t = h("div", {class: "toast tone-" + tone}, message);
  toastHost.append(t);
  setTimeout(() => t.remove(), tone === "bad" ? 7000 : 3500);
}

/** A modal yes/no question; resolves true when confirmed. */
export function confirmDialog(message, {ok = "OK", danger = false, detail} = {}) {
  return new Promise((resolve) => {
    const dlg = h("dialog", {class: "dialog"},
      h("form", {method: "dialog"},
        h("p", {class: "dialog-msg"}, message),
        detail ? h("p", {class: "muted"}, detail) : null,
        h("div", {class: "actions"},
          h("button", {class: "btn", value: "cancel"}, "Cancel"),
          h("button", {class: ["btn", danger ? "btn-danger" : "btn-primary"], value: "ok"}, ok))));
    dlg.addEventListener("close", () => { resolve(dlg.returnValue === "ok"); dlg.remove(); });
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** Tabs: [{id, label}] -> element; onSelect(id) on click. */
export function tabs(items, current, onSelect) {
  return h("nav", {class: "tabs", role: "tablist"}, items.map((t) =>
    h("a", {href: t.href || "#", role: "tab", class: ["tab", t.id === current && "active"],
      "aria-selected": t.id === current ? "true" : "false",
      on: t.href ? null : {click: (e) => { e.preventDefault(); onSelect(t.id); }}}, t.label)));
}

/** A label + control + hint + error slot, bound to an API field name for error placement. */
export function field(label, control, {hint, name, wide} = {}) {
  const id = control.id || (control.id = "f-" + Math.random().toString(36).slice(2, 9));
  return h("div", {class: ["field", wide && "field-wide"], dataset: name ? {field: name} : {}},
    h("label", {for: id}, label),
    control,
    hint ? h("div", {class: "hint"}, hint) : null,
    h("div", {class: "field-error", role: "alert"}));
}

/** Show an API error next to its field inside `form` when it names one, else in `fallback`. */
export function showError(form, err, fallback) {
  clearErrors(form);
  const parts = err && err.field ? String(err.field).split(".") : [];
  const names = parts.length ? [parts.join("."), parts[parts.length - 1], parts[0]] : [];
  const slot = names.map((n) => form.querySelector(`[data-field="${CSS.escape(n)}"]`)).find(Boolean);
  if (slot) {
    slot.classList.add("has-error");
    slot.querySelector(".field-error").textContent = err.message;
    const input = slot.querySelector("input, select, textarea");
    const details = slot.closest("details");
    if (details) details.open = true;
    if (input) input.focus();
  } else if (fallback) {
    replace(fallback, errorBox(err));
  } else {
    toast(err.message || String(err), "bad");
  }
}

/** Submit handling every form shares: no page reload, the previous errors and status cleared, then `handler(event)`. */
export function onSubmit(form, status, handler) {
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    clearErrors(form);
    clear(status);
    return handler(e);
  });
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field.has-error")) {
    el.classList.remove("has-error");
    el.querySelector(".field-error").textContent = "";
  }
}

/** A key/value table. rows: [[key, value-node-or-text], ...] */
export function kv(rows) {
  return h("dl", {class: "kv"}, rows.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
}

export function table(columns, rows, {empty: emptyText, rowAttrs} = {}) {
  if (!rows.length && emptyText) return empty(emptyText);
  return h("div", {class: "table-wrap"}, h("table", {class: "table"},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {class: c.cls}, c.label)))),
    h("tbody", {}, rows.map((r) => h("tr", rowAttrs ? rowAttrs(r) : {},
      columns.map((c) => h("td", {class: c.cls, "data-label": c.label}, c.render(r))))))));
}

/** Text with `backtick` spans shown as code (as in README descriptions); everything stays text. */
export function richText(text) {
  return String(text ?? "").split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
}

export function code(text, lang) {
  return h("pre", {class: "code", dataset: lang ? {lang} : {}}, h("code", {}, text));
}

/** Parse "#/a/b?x=1" into {parts: ["a","b"], query: URLSearchParams}. */
export function parseHash(hash) {
  const raw = (hash || "").replace(/^#\/?/, "");
  const [path, qs] = raw.split("?");
  return {parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(qs || "")};
}

export function hashFor(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
}
