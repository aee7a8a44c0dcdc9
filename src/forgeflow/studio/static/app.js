// Studio shell: hash routing, one page module mounted at a time, and the session chrome.

import {ApiError, del, get, toSignIn} from "./api.js";
import {errorBox, h, parseHash, replace, spinner} from "./dom.js";

const ROUTES = {
  "": "./overview.js",
  datasets: "./datasets.js",
  jobs: "./jobs.js",
  models: "./models.js",
  endpoints: "./endpoints.js",
  connections: "./connections.js",
  flows: "./flows.js",
  playground: "./playground.js",
};

const TITLES = {
  "": "Overview", datasets: "Datasets", jobs: "Fine-tuning", models: "Models", endpoints: "Endpoints",
  connections: "Connections", flows: "Flows", playground: "Playground",
};

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
        if (e instanceof ApiError && e.status === 404) {  // what this page watches is gone: stop asking
          offline(null);
          gone(e);
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

async function session() {
  try {
    const s = await get("/session");
    document.getElementById("version").textContent = "v" + s.version;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) console.warn(e);
  }
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

session();
route();
