// Users and tokens: who may use this workspace with which role, and the personal access tokens they sign in with.
// Everyone sees the users and manages their own tokens; an owner adds and removes users, changes roles, and makes
// and revokes anyone's tokens. A token's secret is in the answer that makes it and shown here that once.

import {can, whoami} from "./access.js";
import {del, get, patch, post, seg} from "./api.js";
import {
  badge, busy, button, clear, confirmDialog, copyButton, field, fmtTime, h, onSubmit, pageHead, replace, showError,
  table, timeEl, toast,
} from "./dom.js";

const ROLES = ["reader", "contributor", "owner"];

export default async function users(root, ctx) {
  const me = whoami();
  root.append(pageHead("Users and tokens", can("owner")
    ? "Roles: a reader sees everything but secrets; a contributor also creates and runs things; an owner also manages users."
    : "Your personal access tokens; an owner manages users and roles."));
  const secret = h("div", {"data-testid": "new-token-slot"});
  const errorSlot = h("div");
  const usersCard = h("section", {class: "card", "data-testid": "users"});
  const tokensCard = h("section", {class: "card", "data-testid": "tokens"});
  root.append(secret, errorSlot, h("div", {class: "grid-2 wide-left"}, usersCard, h("div", {class: "stack"},
    userForm(ctx, shown, refresh), tokenForm(ctx, me, shown))), tokensCard);

  /** A token's secret, this once, with a copy button. */
  function shown(made) {
    replace(secret, h("div", {class: "alert alert-warn secret-once", role: "status"},
      h("p", {}, h("b", {}, `Token for ${made.user}`), made.role ? ` (${made.role})` : "",
        `, expires ${fmtTime(made.expires_at)}. Copy it now: it is not shown again.`),
      h("div", {class: "key-row"}, h("code", {class: "secret break", "data-testid": "new-token"}, made.token),
        copyButton(made.token))));
    secret.scrollIntoView({block: "nearest"});
    refresh();
  }

  async function refresh() {
    const [list, tokens] = await Promise.all([get("/users", {signal: ctx.signal}), get("/tokens", {signal: ctx.signal})]);
    replace(usersCard, h("h2", {}, "Users"), table([
      {label: "User", render: (u) => h("span", {}, h("b", {}, u.name), u.name === me.user ? h("span", {class: "muted small"}, " (you)") : null)},
      {label: "Role", render: (u) => roleCell(u)},
      {label: "Added", render: (u) => h("span", {}, timeEl(u.created_at), u.created_by ? h("span", {class: "muted small"}, ` by ${u.created_by}`) : null)},
      {label: "", render: (u) => h("span", {class: "row-actions"}, newTokenButton(u), removeButton(u))},
    ], list, {rowAttrs: (u) => ({"data-user": u.name})}));
    replace(tokensCard, h("h2", {}, can("owner") ? "Tokens" : "Your tokens"), table([
      {label: "Token", render: (t) => h("code", {}, t.id)},
      {label: "User", render: (t) => h("span", {}, t.user, t.role ? h("span", {class: "muted small"}, ` ${t.role}`) : null)},
      {label: "About", cls: "wrap", render: (t) => t.description || "–"},
      {label: "Made", render: (t) => h("span", {}, timeEl(t.created_at), t.created_by ? h("span", {class: "muted small"}, ` by ${t.created_by}`) : null)},
      {label: "Expires", render: (t) => (t.expires_at ? h("span", {title: fmtTime(t.expires_at)}, fmtTime(t.expires_at)) : "never")},
      {label: "State", render: (t) => state(t)},
      {label: "", render: (t) => (live(t) ? revokeButton(t) : null)},
    ], tokens, {empty: "No tokens yet.", rowAttrs: (t) => ({"data-token": t.id})}));
  }

  function roleCell(u) {
    if (!can("owner") || u.name === "owner") return badge(u.role, "off");
    const sel = h("select", {"aria-label": `role of ${u.name}`, name: `role-${u.name}`, class: "role-select"},
      ROLES.map((r) => h("option", {value: r, selected: r === u.role}, r)));
    sel.addEventListener("change", async () => {
      sel.disabled = true;
      clear(errorSlot);
      try {
        const next = await patch(`/users/${seg(u.name)}`, {role: sel.value});
        toast(`${next.name} is now ${next.role}`);
        if (u.name === me.user) location.reload();  // your own role: what Studio offers changes
      } catch (e) {
        sel.value = u.role;
        replace(errorSlot, h("div", {class: "alert alert-bad", role: "alert"}, e.message));
      } finally {
        sel.disabled = false;
      }
    });
    return sel;
  }

  function newTokenButton(u) {
    if (u.name !== me.user && !can("owner")) return null;
    const b = button("New token", async () => {
      await busy(b, async () => shown(await post("/tokens", {user: u.name, description: "made in Studio"})), errorSlot);
    }, {kind: "small", testid: `new-token-${u.name}`});
    return b;
  }

  function removeButton(u) {
    if (u.name === "owner" || u.name === me.user) return null;
    const b = button("Remove", async () => {
      if (!await confirmDialog(`Remove user ${u.name}?`, {ok: "Remove", danger: true,
        detail: "Their tokens are revoked and their Studio sessions end at once."})) return;
      await busy(b, async () => {
        await del(`/users/${seg(u.name)}`);
        toast(`Removed ${u.name}`);
        await refresh();
      }, errorSlot);
    }, {kind: "small", needs: "owner"});
    return b;
  }

  function revokeButton(t) {
    if (t.user !== me.user && !can("owner")) return null;
    const b = button("Revoke", async () => {
      const mine = t.id === me.token_id;
      if (!await confirmDialog(`Revoke token ${t.id} of ${t.user}?`, {ok: "Revoke", danger: true,
        detail: mine ? "It is the token you signed in with: this session ends too."
          : "It stops working at once, and so does every Studio session signed in with it."})) return;
      await busy(b, async () => {
        await del(`/tokens/${seg(t.id)}`);
        toast(`Revoked ${t.id}`);
        await refresh();
      }, errorSlot);
    }, {kind: "small", testid: `revoke-${t.id}`});
    return b;
  }

  await refresh();
}

function live(t) {
  return !t.revoked_at && !(t.expires_at && t.expires_at * 1000 < Date.now());
}

function state(t) {
  if (t.revoked_at) return h("span", {title: fmtTime(t.revoked_at)}, badge("revoked", "off"));
  if (t.expires_at && t.expires_at * 1000 < Date.now()) return badge("expired", "off");
  return badge("live", "ok");
}

/** Owner only: a new user and their first token. */
function userForm(ctx, shown, refresh) {
  const name = h("input", {type: "text", name: "name", placeholder: "e.g. alice", autocomplete: "off", spellcheck: "false"});
  const role = h("select", {name: "role"}, ROLES.map((r) => h("option", {value: r, selected: r === "contributor"}, r)));
  const days = h("input", {type: "number", name: "expires_in_days", value: "90", min: "1", max: "365", step: "1"});
  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn btn-primary"}, "Add user");
  const form = h("form", {class: "card form", novalidate: true, "data-needs": "owner", "data-testid": "user-form"},
    h("h2", {}, "Add a user"),
    h("div", {class: "row"}, field("Name", name, {name: "name", hint: "A letter first, then letters, digits, . _ @ -"}),
      field("Role", role, {name: "role"})),
    field("First token expires in (days)", days, {name: "expires_in_days"}),
    status, h("div", {class: "actions"}, submit));
  onSubmit(form, status, () => busy(submit, async () => {
    try {
      const made = await post("/users", {name: name.value.trim(), role: role.value,
        expires_in_days: Number(days.value)}, {signal: ctx.signal});
      toast(`Added ${made.user}`);
      name.value = "";
      shown(made);
    } catch (err) {
      if (err.name !== "AbortError") showError(form, err, status);
    }
  }));
  return form;
}

/** A token for yourself (everyone), e.g. for a script; the owner makes others' from the users table. */
function tokenForm(ctx, me, shown) {
  const about = h("input", {type: "text", name: "description", placeholder: "what it is for, e.g. CI", autocomplete: "off"});
  const days = h("input", {type: "number", name: "expires_in_days", value: "90", min: "1", max: "365", step: "1"});
  const status = h("div", {class: "form-status"});
  const submit = h("button", {type: "submit", class: "btn"}, "Make a token");
  const form = h("form", {class: "card form", novalidate: true}, h("h2", {}, `A token for you (${me.user})`),
    h("div", {class: "row"}, field("Description", about, {name: "description"}),
      field("Expires in (days)", days, {name: "expires_in_days"})),
    status, h("div", {class: "actions"}, submit));
  onSubmit(form, status, () => busy(submit, async () => {
    try {
      shown(await post("/tokens", {description: about.value.trim() || null, expires_in_days: Number(days.value)},
        {signal: ctx.signal}));
      about.value = "";
    } catch (err) {
      if (err.name !== "AbortError") showError(form, err, status);
    }
  }));
  return form;
}
