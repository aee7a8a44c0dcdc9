// Activity: the workspace's audit log (who changed what, when, from where, and how it ended), newest first,
// filtered by time and user; the filters live in the address (`#/activity?since=1d&user=alice`) and the list
// refreshes by itself. Every role may read it; it never holds a secret (the server records none).

import {get} from "./api.js";
import {badge, fmtTime, h, pageHead, replace, table, timeEl} from "./dom.js";

const SPANS = [["1h", "the last hour"], ["1d", "the last day"], ["7d", "the last 7 days"], ["30d", "the last 30 days"],
  ["", "all time"]];
const LIMIT = 200;
const EVERY_MS = 3000;

export default async function activity(root, ctx) {
  const q = ctx.route.query;
  const since = q.has("since") ? q.get("since") : "1d";
  const user = q.get("user") || "";

  const sinceSel = h("select", {name: "since", "aria-label": "since"}, SPANS.map(([v, label]) =>
    h("option", {value: v, selected: v === since}, label)));
  if (![...sinceSel.options].some((o) => o.value === since)) {
    sinceSel.append(h("option", {value: since, selected: true}, `since ${since}`));  // an ISO time typed in the address
  }
  const seen = h("datalist", {id: "activity-users"});
  const userIn = h("input", {type: "text", name: "user", value: user, list: "activity-users", placeholder: "everyone",
    "aria-label": "user", autocomplete: "off", spellcheck: "false"});
  const apply = () => {
    const next = new URLSearchParams();
    if (sinceSel.value !== "1d") next.set("since", sinceSel.value);
    if (userIn.value.trim()) next.set("user", userIn.value.trim());
    const qs = next.toString();
    location.hash = "#/activity" + (qs ? "?" + qs : "");
  };
  sinceSel.addEventListener("change", apply);
  userIn.addEventListener("change", apply);

  const count = h("span", {class: "muted small"});
  const host = h("section", {class: "card", "data-testid": "activity"});
  root.append(pageHead("Activity", "Every change made in this workspace: who, what, when and from where."),
    h("section", {class: "card filters"}, h("div", {class: "toolbar"},
      h("label", {class: "inline"}, "Since ", sinceSel), h("label", {class: "inline"}, "User ", userIn, seen), count)),
    host);

  const names = new Set();
  const suggest = (name) => {
    if (name && !names.has(name)) { names.add(name); seen.append(h("option", {value: name})); }
  };
  get("/users", {signal: ctx.signal}).then((list) => list.forEach((u) => suggest(u.name)), () => {});  // suggestions only
  ctx.poll(async () => {
    const answer = await get("/audit", {query: {since: since || undefined, user: user || undefined, limit: LIMIT},
      signal: ctx.signal});
    const rows = Array.isArray(answer) ? answer : answer.entries || [];
    rows.forEach((r) => suggest(who(r)));
    replace(count, rows.length >= LIMIT ? `the newest ${LIMIT}` : `${rows.length} ${rows.length === 1 ? "change" : "changes"}`);
    replace(host, table([
      {label: "When", render: (r) => h("span", {title: fmtTime(r.at)}, timeEl(r.at))},
      {label: "Who", render: (r) => h("span", {class: "who"}, h("b", {}, who(r) || "–"), " ",
        r.role ? h("span", {class: "muted small"}, r.role) : null)},
      {label: "Action", cls: "wrap", render: (r) => h("code", {}, r.action)},
      {label: "Target", cls: "wrap", render: (r) => (r.target ? h("span", {class: "break"}, r.target) : "–")},
      {label: "Result", render: (r) => result(r.status)},
      {label: "From", render: (r) => r.client || "–"},
    ], rows, {empty: user ? `No changes by ${user} in ${label(since)}.` : `No changes in ${label(since)}.`,
      rowAttrs: (r) => ({"data-id": r.id})}));
    return true;
  }, EVERY_MS);
}

function who(r) {
  return r.user ?? r.user_name ?? null;
}

function label(since) {
  const span = SPANS.find(([v]) => v === since);
  return span ? span[1] : `the time since ${since}`;
}

function result(status) {
  if (status === null || status === undefined) return "–";
  const tone = status < 300 ? "ok" : status < 500 ? "wait" : "bad";
  return badge(String(status), tone);
}
