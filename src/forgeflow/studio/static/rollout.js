// An endpoint's Rollout tab: the running (else the last) rollout of one of its deployments: its plan and step,
// the condition it must hold, the figures of the step so far, and every decision with its evidence.

import {ApiError, get, post, seg} from "./api.js";
import {badge, button, busy, empty, h, kv, replace, table, timeEl, toast} from "./dom.js";

const TONE = {Running: "busy", Promoted: "ok", RolledBack: "bad", Stalled: "bad", Canceled: "off", Failed: "bad"};
const FIGURES = ["requests", "errors", "error_rate", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "ttft_p95_ms", "judge"];

function num(v) {
  return typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v);
}

function figures(f) {
  const parts = FIGURES.filter((k) => f && f[k] !== null && f[k] !== undefined).map((k) => `${k}=${num(f[k])}`);
  return parts.length ? parts.join(" · ") : "no requests yet";
}

function detail(e) {
  if (e.event === "step") return `${e.percent}% → ${Object.entries(e.traffic).map(([d, p]) => `${d} ${p}%`).join(", ")}`;
  if (e.event === "check") {
    return h("div", {}, e.clauses.map((c) => h("div", {}, badge(c.passed ? "held" : "failed", c.passed ? "ok" : "bad"), " ",
      h("code", {}, c.clause), " ", Object.entries(c.values).map(([k, v]) => `${k}=${v === null ? "none" : num(v)}`).join(", "))));
  }
  if (e.event === "started") return `by ${e.by || "owner"}; traffic was ${JSON.stringify(e.traffic)}`;
  return e.why || (e.traffic ? JSON.stringify(e.traffic) : "");
}

export async function rollout(root, ctx, ep) {
  const card = h("section", {class: "card", "data-testid": "rollout"});
  root.append(card);
  ctx.poll(async () => {
    let r;
    try {
      r = await get(`/endpoints/${seg(ep.name)}/rollouts/current`, {signal: ctx.signal});
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        replace(card, empty("No rollout yet. Start one with: forgeflow online-endpoint rollout --name " + ep.name +
          " --deployment NAME --canary 10 --step 10,50,100 --promote-if \"error_rate<0.01 and p95_latency_ms<1.2*blue\""));
        return;
      }
      throw err;
    }
    const cancel = r.state === "Running" && !r.cancel_requested ? button("Cancel rollout", () => busy(cancel, async () => {
      await post(`/endpoints/${seg(ep.name)}/rollouts/current/cancel`, {});
      toast("Cancel asked: the split from before comes back within a poll");
    }), {kind: "danger", needs: "contributor"}) : null;
    replace(card, h("h2", {}, "Rollout of ", h("b", {}, r.deployment), " ", badge(r.state, TONE[r.state])),
      kv([
        ["Plan", r.plan.map((p, i) => (i + 1 === r.step && r.state === "Running" ? `[${p}%]` : `${p}%`)).join(" → ")],
        ["Promote if", h("code", {}, r.promote_if)],
        ["Min requests per step", String(r.min_requests)],
        r.reason ? ["Why", r.reason] : null,
        ...Object.entries(r.window || {}).map(([d, f]) => [`${d}, this step so far`, figures(f)]),
        ["Started", timeEl(r.created_at)],
      ]),
      table([
        {label: "When", render: (e) => timeEl(e.at)},
        {label: "Decision", render: (e) => h("b", {}, e.event)},
        {label: "Evidence", render: detail},
      ], r.history),
      cancel ? h("div", {class: "actions"}, cancel) : null);
  }, 3000);
}
