// An endpoint's Consume tab (scoring URI, keys hidden until revealed, ready-to-paste snippets) and Logs tab.

import {can} from "./access.js";
import {get, post, seg} from "./api.js";
import {busy, button, code, confirmDialog, copyButton, empty, errorBox, h, kv, replace, tabs, toast} from "./dom.js";

const MASK = "•".repeat(24);

export async function consume(root, ctx, ep) {
  const tokenMode = ep.auth_mode === "token";
  let creds = null;
  const shown = {primary: false, secondary: false};
  const errorSlot = h("div");
  const keysCard = h("section", {class: "card", "data-testid": "keys", "data-needs": "contributor"});  // keys: contributor and up
  const snippetsCard = h("section", {class: "card"});
  let snippetTab = "curl";
  let route = "";

  async function load() {
    creds = await get(`/endpoints/${seg(ep.name)}/credentials`, {signal: ctx.signal});
    return creds;
  }
  const keyOf = (type) => (creds ? (tokenMode ? creds.access_token : creds[`${type}_key`]) : null);

  function keyRow(type, label) {
    const value = h("code", {class: "secret", "data-testid": `${type}-key`}, shown[type] && keyOf(type) ? keyOf(type) : MASK);
    const reveal = button(shown[type] ? "Hide" : "Reveal", async () => {
      if (shown[type]) { shown[type] = false; render(); return; }
      await busy(reveal, async () => { await load(); shown[type] = true; render(); }, errorSlot);
    }, {kind: "small", testid: `reveal-${type}`});
    const copy = copyButton(async () => keyOf(type) || ((await load()) && keyOf(type)) || "");
    const regen = button("Regenerate", async () => {
      const ok = await confirmDialog(`Regenerate the ${label.toLowerCase()} of ${ep.name}?`, {ok: "Regenerate", danger: true,
        detail: tokenMode ? "Every token issued so far stops working at once."
          : "The current key stops working at once; clients using it get 401 until they use the new one."});
      if (!ok) return;
      await busy(regen, async () => {
        creds = await post(`/endpoints/${seg(ep.name)}/regenerate-keys`, {key_type: type});
        toast(`New ${label.toLowerCase()}: the old one no longer works`);
        render();
      }, errorSlot);
    }, {kind: "small", testid: `regenerate-${type}`});
    return [h("dt", {}, label), h("dd", {class: "key-row"}, value, h("span", {class: "row-actions"}, reveal, copy, regen))];
  }

  function render() {
    const rows = tokenMode
      ? [keyRow("primary", "Token"), h("dt", {}, "Expires"), h("dd", {}, creds && shown.primary ? creds.expiry_time_utc : "–")]
      : [keyRow("primary", "Primary key"), keyRow("secondary", "Secondary key")];
    replace(keysCard, h("h2", {}, tokenMode ? "Token" : "Keys"),
      h("p", {class: "muted small"}, tokenMode
        ? "Tokens expire; Reveal issues a fresh one. Regenerate revokes every token issued so far."
        : "Send either key as 'Authorization: Bearer <key>'. Regenerate one while clients use the other."),
      errorSlot, h("dl", {class: "kv keys"}, rows));
    renderSnippets();
  }

  function renderSnippets() {
    const reveal = can("contributor") ? ": press Reveal" : "";
    const key = (shown.primary && keyOf("primary")) || (tokenMode ? `<token${reveal}>` : `<primary key${reveal}>`);
    const text = snippet(snippetTab, ep, key, route);
    const routeSel = h("select", {"aria-label": "route", on: {change: (e) => { route = e.target.value; renderSnippets(); }}},
      h("option", {value: ""}, "by live traffic"), ep.deployments.map((d) => h("option", {value: d, selected: d === route}, `deployment ${d}`)));
    replace(snippetsCard, h("div", {class: "card-head"}, h("h2", {}, "Call it"), h("label", {class: "inline"}, "Route ", routeSel)),
      tabs([{id: "curl", label: "curl"}, {id: "requests", label: "Python (requests)"}, {id: "openai", label: "Python (openai)"}],
        snippetTab, (id) => { snippetTab = id; renderSnippets(); }),
      h("div", {class: "snippet"}, code(text, snippetTab === "curl" ? "shell" : "python"), h("div", {class: "snippet-copy"}, copyButton(text))),
      h("p", {class: "muted small"}, shown.primary ? "The snippet holds the revealed key: keep it private."
        : can("contributor") ? "Reveal the primary key to paste a snippet that runs as is."
          : "Keys are shown to contributors and owners: ask one for a key to put in the snippet."));
  }

  root.append(h("div", {class: "grid-2"},
    h("section", {class: "card"}, h("h2", {}, "Endpoint"), kv([
      ["Scoring URI", h("span", {class: "path"}, h("code", {class: "break", "data-testid": "scoring-uri"}, ep.scoring_uri), " ", copyButton(ep.scoring_uri))],
      ["OpenAI base URL", h("span", {class: "path"}, h("code", {class: "break"}, ep.openai_base_url), " ", copyButton(ep.openai_base_url))],
      ["Authentication", tokenMode ? "token (Bearer, expiring)" : "key (Bearer)"],
      ["Deployments", ep.deployments.length ? ep.deployments.join(", ") : "none yet"],
    ])), keysCard), snippetsCard);
  render();
}

function snippet(kind, ep, key, route) {
  const body = ['{"input_data": {', '      "input_string": [{"role": "user", "content": "Hello!"}],',
    '      "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}'].join("\n");
  if (kind === "curl") {
    return [`curl -s "${ep.scoring_uri}" \\`, `  -H "Authorization: Bearer ${key}" \\`, `  -H "Content-Type: application/json" \\`,
      route ? `  -H "azureml-model-deployment: ${route}" \\` : null, `  -d '${body}'`].filter(Boolean).join("\n");
  }
  if (kind === "requests") {
    return [
      "import requests", "",
      `url = "${ep.scoring_uri}"`,
      `headers = {"Authorization": "Bearer ${key}"${route ? `, "azureml-model-deployment": "${route}"` : ""}}`,
      'body = {"input_data": {"input_string": [{"role": "user", "content": "Hello!"}],',
      '                       "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}', "",
      "response = requests.post(url, json=body, headers=headers, timeout=120)",
      "response.raise_for_status()",
      'print(response.json()["output"])',
    ].join("\n");
  }
  return [
    "from openai import OpenAI", "",
    "client = OpenAI(",
    `    base_url="${ep.openai_base_url}",`,
    `    api_key="${key}",`,
    ")",
    "stream = client.chat.completions.create(",
    `    model="${route || ep.name}",`,
    '    messages=[{"role": "user", "content": "Hello!"}],',
    "    temperature=0.7,",
    "    max_tokens=128,",
    "    stream=True,",
    ")",
    "for chunk in stream:",
    '    print(chunk.choices[0].delta.content or "", end="", flush=True)',
    "print()",
  ].join("\n");
}

export async function logs(root, ctx, ep) {
  if (!ep.deployments.length) {
    root.append(empty("No deployments yet, so no logs."));
    return;
  }
  const wanted = ctx.route.query.get("deployment");
  const dep = h("select", {"aria-label": "deployment"}, ep.deployments.map((d) => h("option", {value: d, selected: d === wanted}, d)));
  const lines = h("select", {"aria-label": "lines"}, [50, 100, 500, 1000].map((n) => h("option", {value: n, selected: n === 100}, `last ${n} lines`)));
  const follow = h("input", {type: "checkbox", checked: true});
  const pre = h("pre", {class: "log tall", "data-testid": "deployment-log"});
  const errorSlot = h("div");
  root.append(h("section", {class: "card"},
    h("div", {class: "card-head"}, h("h2", {}, "Deployment logs"),
      h("div", {class: "toolbar"}, dep, lines, h("label", {class: "check"}, follow, " follow"))),
    errorSlot, pre));
  let stick = true;
  pre.addEventListener("scroll", () => { stick = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24; });
  async function load() {
    try {
      const out = await get(`/endpoints/${seg(ep.name)}/deployments/${seg(dep.value)}/logs`, {query: {lines: lines.value}, signal: ctx.signal});
      replace(errorSlot);
      if (pre.textContent !== out.text) {
        pre.textContent = out.text || "(empty)";
        if (stick) pre.scrollTop = pre.scrollHeight;
      }
    } catch (e) {
      if (e.name !== "AbortError") replace(errorSlot, errorBox(e));
    }
  }
  dep.addEventListener("change", () => { stick = true; load(); });
  lines.addEventListener("change", load);
  ctx.poll(async () => { if (follow.checked || !pre.textContent) await load(); }, 3000);
}
