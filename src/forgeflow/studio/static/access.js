// Who is signed in and what their role may do. Controls a role may not use carry `data-needs="contributor"` or
// `data-needs="owner"`; one rule in style.css hides them, keyed on <html data-role>, which is set here from
// /api/session (the caller as /api/me tells it, with the server's version). Until it has answered no role is set, so
// nothing gated shows.

import {get} from "./api.js";
import {h} from "./dom.js";

const RANK = {reader: 0, contributor: 1, owner: 2};
let me = null;

/** The signed-in user as /api/session reports it ({user, role, token_id, expires_at, version}), or null before it
 * answered. */
export function whoami() {
  return me;
}

/** Whether the signed-in role is `role` or above (reader < contributor < owner). */
export function can(role) {
  return !!me && (RANK[me.role] ?? -1) >= RANK[role];
}

/** Ask the server again who this session is; resolves true when the role changed. */
export async function refreshMe() {
  const next = await get("/session");
  const changed = !me || me.role !== next.role || me.user !== next.user;
  me = next;
  document.documentElement.dataset.role = next.role;
  return changed;
}

/** A page or form the signed-in role may not use: say which role it needs instead of offering it. */
export function needsNote(role, what) {
  const text = `${what} needs the ${role} role.`;
  const body = me
    ? [` You are signed in as `, h("b", {}, me.user), ` (${me.role}); an owner of this workspace can give it to you: `,
      h("code", {}, `forgeflow user update ${me.user} --role ${role}`), "."]
    : " An owner of this workspace can give it to you.";
  return h("div", {class: "alert alert-warn needs-role", role: "note", "data-testid": "needs-role"}, text, body);
}
