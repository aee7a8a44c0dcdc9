// Studio shell: hash routing, one page module mounted at a time, and the session chrome (who is signed in, with
// which role; pages a role may not use say so instead of offering a form the server would refuse).

import {can, needsNote, refreshMe, whoami} from "./access.js";
import {ApiError, del, get, toSignIn} from "./api.js";
import {errorBox, fmtTime, h, pageHead, parseHash, replace, spinner} from "./dom.js";

const ROUTES = {
  "": "./overview.js",
  datasets: "./datasets.js",
  jobs: "./jobs.js",
  models: "./models.js",
  endpoints: "./endpoints.js",
  connections: "./connections.js",
  flows: "./flows.js",
  playground: "./playground.js",
  activity: "./activity.js",
  users: "./users.js",
};

const TITLES = {
  "": "Overview", datasets: "Datasets", jobs: "Fine-tuning", models: "Models", endpoints: "Endpoints",
  connections: "Connections", flows: "Flows", playground: "Playground", activity: "Activity", users: "Users",
};

/** Routes a role below the one named may not use (by "section" or "section/sub"): what, and the role it needs. */
const NEEDS = {
  "jobs/new": ["contributor", "Starting a fine-tuning job"],
  playground: ["contributor", "The playground (it reads endpoint keys and runs flows)"],
};
const ME_EVERY_MS = 30_000;  // a revoked token or a changed role shows within this even on a page that does not poll

function needOf(parts) {
  return NEEDS[parts.slice(0, 2).join("/")] || NEEDS[parts[0] || ""] || null;
}

/** What a page gets: its route, an abort signal that fires when the user leaves, and polling. */
class PageContext {
  constructor(route) {
    this.route = route;
    this.controller = new AbortController();
    this.cleanups = [];
  }
  get signal() { return this.controller.signal; }
  get alive() { return !this.controller.signal.aborted; }
  onLeave(fn) { this.cleanups.push(fn); }
  /** Call fn now and again `ms` after each call ends, until the page is left or fn returns false. */
  poll(fn, ms) {
    let timer = null;
    const tick = async () => {
      if (!this.alive) return;
      let again = true;
      try {
        again = (await fn()) !== false;
        offline(null);
      } catch (e) {
        if (e.name === "AbortError" || (e instanceof ApiError && e.status === 401)) return;
        if (e instanceof ApiError && (e.status === 404 || e.status === 403)) {  // gone, or no longer allowed: stop asking
          offline(null);
          if (e.status === 404) gone(e);
          else refused(e);
          return;
        }
        offline(e);
      }
      if (again && this.alive) timer = setTimeout(tick, typeof ms === "function" ? ms() : ms);
    };
    this.onLeave(() => clearTimeout(timer));
    tick();
    return () => clearTimeout(timer);
  }
  leave() {
    this.controller.abort();
    for (const fn of this.cleanups.splice(0)) {
      try { fn(); } catch (e) { console.warn(e); }
    }
  }
}

/** A banner while live refreshes fail (server stopped, network gone); it goes when one succeeds again. */
function offline(error) {
  let bar = document.getElementById("offline");
  if (!error) { if (bar) bar.remove(); return; }
  if (!bar) {
    bar = h("div", {id: "offline", class: "offline", role: "status"});
    document.body.append(bar);
  }
  bar.textContent = `Live updates paused, retrying: ${error.message}`;
}

/** A page whose subject was deleted meanwhile (elsewhere, or by another user): say so instead of retrying. */
function gone(error) {
  const main = document.getElementById("main");
  if (main.querySelector(".gone")) return;
  main.prepend(h("div", {class: "alert alert-bad gone", role: "alert"},
    `${error.message} — it was deleted or renamed; live updates stopped. `, h("a", {href: "#/"}, "Back to the overview")));
}

/** A page whose live data the role may no longer read (its role changed meanwhile): the server's reason. */
function refused(error) {
  const main = document.getElementById("main");
  if (main.querySelector(".refused")) return;
  main.prepend(h("div", {class: "alert alert-bad refused", role: "alert"}, `${error.message} — live updates stopped.`));
}

let current = null;
let generation = 0;

async function route() {
  const main = document.getElementById("main");
  let parts, query;
  try {
    ({parts, query} = parseHash(location.hash));
  } catch {  // e.g. a broken %-escape typed into the address bar
    parts = ["not-found"];
    query = {};
  }
  const section = parts[0] || "";
  if (current) current.leave();
  offline(null);
  const ctx = new PageContext({parts, query, section});
  current = ctx;
  const mine = ++generation;

  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === section);
    if (a.dataset.nav === section) {
      a.setAttribute("aria-current", "page");
      const nav = a.parentElement;
      if (nav.scrollWidth > nav.clientWidth) nav.scrollLeft = a.offsetLeft - nav.offsetLeft - (nav.clientWidth - a.offsetWidth) / 2;
    }
    else a.removeAttribute("aria-current");
  }
  document.title = `${TITLES[section] || "Not found"} · forgeflow Studio`;

  const modulePath = ROUTES[section];
  if (!modulePath) {
    replace(main, h("div", {class: "page"}, h("h1", {}, "Not found"),
      h("p", {}, "There is no page at ", h("code", {}, location.hash), ". ", h("a", {href: "#/"}, "Go to the overview"), ".")));
    return;
  }
  delete main.dataset.route;
  const need = needOf(parts);
  if (need && !can(need[0])) {
    replace(main, h("div", {class: "page", "data-page": section}, pageHead(TITLES[section]), needsNote(...need)));
    main.dataset.route = parts.join("/");
    return;
  }
  replace(main, h("div", {class: "page loading"}, spinner("loading")));
  try {
    let mod;
    try {
      mod = await import(modulePath);
    } catch (e) {
      await get("/session");  // 401 -> the sign-in page; otherwise the import error itself is shown
      throw e;
    }
    if (mine !== generation) return;
    const page = h("div", {class: "page", "data-page": section || "overview"});
    replace(main, page);
    await mod.default(page, ctx);
    if (mine === generation) main.dataset.route = parts.join("/"); // rendered: tests and tools can wait for this
  } catch (e) {
    if (mine !== generation || e.name === "AbortError" || (e instanceof ApiError && e.status === 401)) return;
    console.error(e);
    replace(main, h("div", {class: "page"}, errorBox(e)));
  }
}

/** Ask who is signed in (again) and show it; a page the role just lost is drawn again as its note. */
async function me() {
  let changed;
  try {
    changed = await refreshMe();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) console.warn(e);
    return;
  }
  const who = whoami();
  document.getElementById("version").textContent = "v" + who.version;
  replace(document.getElementById("whoami"),
    h("span", {class: "who-user", title: who.expires_at ? `token expires ${fmtTime(who.expires_at)}` : null}, who.user),
    h("span", {class: "badge tone-off who-role", "data-testid": "role"}, who.role));
  if (changed && current && needOf(current.route.parts)) route();
}

document.getElementById("signout").addEventListener("click", async () => {
  try { await del("/session"); } catch (e) { console.warn(e); }
  toSignIn();
});

window.addEventListener("hashchange", () => {
  route();
  document.getElementById("main").focus({preventScroll: true});
  window.scrollTo(0, 0);
});

window.addEventListener("forgeflow:forbidden", me);
setInterval(me, ME_EVERY_MS);
me().then(route);
