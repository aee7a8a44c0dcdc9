// One job: live loss curves, learning rate, tokens/s, ETA, the log tail, Cancel / Resume. An evaluation job shows
// its result side by side instead of curves; a fine-tune evaluated against its base shows that evaluation.

import {get, post, seg} from "./api.js";
import {lineChart} from "./chart.js";
import {
  badge, busy, button, confirmDialog, errorBox, fmtDuration, fmtNum, fmtTime, h, hashFor, kv, replace, toast,
} from "./dom.js";
import {showResult} from "./evaluation.js";
import {FINAL, elapsed, shortModel} from "./jobs.js";

const LOG_KEEP = 400; // lines of log kept on screen
const ACTIVE_MS = 1500;

export default async function jobPage(root, ctx, id) {
  let job = await get(`/jobs/${seg(id)}`, {signal: ctx.signal});
  const metrics = [];
  let logText = "";
  let logOffset = 0;
  const isEval = job.type === "evaluation";

  const title = h("span", {}, job.name || job.id);
  const statusSlot = h("span", {class: "head-badge"});
  const actions = h("div", {class: "actions"});
  const head = h("header", {class: "page-head"},
    h("div", {}, h("h1", {}, title, " ", statusSlot),
      h("p", {class: "sub"}, h("a", {href: "#/jobs"}, "Fine-tuning"), " / ", job.id)),
    actions);
  const errorSlot = h("div");
  const stats = h("div", {class: "stats", "data-testid": "job-stats"});
  const lossHost = h("section", {class: "card chart-card", "data-testid": "loss-chart"}, h("h2", {}, "Loss"));
  const lrHost = h("section", {class: "card chart-card"}, h("h2", {}, "Learning rate"));
  const tpsHost = h("section", {class: "card chart-card"}, h("h2", {}, "Tokens per second"));
  const details = h("section", {class: "card"});
  const logPre = h("pre", {class: "log", "data-testid": "job-log", tabindex: "0"});
  const logCard = h("section", {class: "card"}, h("div", {class: "card-head"}, h("h2", {}, "Log"),
    h("span", {class: "muted small"}, "the worker's output, newest at the bottom")), logPre);
  const evalHost = h("section", {class: "card", "data-testid": "evaluation-result"});
  const curves = [lossHost, h("div", {class: "grid-2"}, lrHost, tpsHost)];
  root.append(head, errorSlot, stats, ...(isEval ? [evalHost] : [evalHost, ...curves]),
    h("div", {class: "grid-2"}, details, logCard));
  evalHost.hidden = true;
  if (!isEval && job.evaluation_job) {
    evalHost.hidden = false;  // evaluate_against_base: its evaluation runs after the fine-tune, so keep asking
    const evalId = job.evaluation_job;
    ctx.poll(async () => {
      if (await showResult(evalHost, evalId, "Base vs fine-tuned", ctx.signal)) return false;
      const evaluation = await get(`/jobs/${seg(evalId)}`, {signal: ctx.signal});
      if (!FINAL.has(evaluation.status)) return true;
      // ended without a result (Failed or Canceled): say so and stop asking; Resume on its page continues it
      replace(evalHost, h("div", {class: "card-head"}, h("h2", {}, "Base vs fine-tuned"),
        h("a", {href: hashFor("jobs", evalId)}, evalId)),
        h("p", {"data-testid": "evaluation-ended"}, "The evaluation ", badge(evaluation.status),
          evaluation.error ? `: ${evaluation.error}` : "", " (open it to resume it)."));
      return false;
    }, 3000);
  }

  const loss = lineChart(lossHost, {xLabel: "step", xInteger: true, height: 240, emptyText: "The curve appears with the first logged step."});
  const lr = lineChart(lrHost, {xLabel: "step", xInteger: true, height: 160, emptyText: "No steps logged yet."});
  const tps = lineChart(tpsHost, {xLabel: "step", xInteger: true, height: 160, emptyText: "No steps logged yet.",
    yFormat: (v) => fmtNum(Math.round(v))});
  ctx.onLeave(() => { loss.disconnect(); lr.disconnect(); tps.disconnect(); });

  function renderActions() {
    const list = [];
    if (!FINAL.has(job.status) && job.status !== "CancelRequested") {
      const b = button("Cancel", async () => {
        if (!await confirmDialog(`Cancel ${job.name || job.id}?`, {ok: "Cancel job", danger: true,
          detail: "It stops at the next step; Resume continues from its last checkpoint."})) return;
        await busy(b, async () => { job = await post(`/jobs/${seg(job.id)}/cancel`); render(); }, errorSlot);
      }, {kind: "danger", testid: "cancel-job", needs: "contributor"});
      list.push(b);
    }
    if (job.status === "Failed" || job.status === "Canceled") {
      const b = button("Resume", async () => {
        await busy(b, async () => {
          job = await post(`/jobs/${seg(job.id)}/resume`);
          toast("Queued again; it continues from its last checkpoint");
          render();
          follow();
        }, errorSlot);
      }, {kind: "primary", testid: "resume-job", needs: "contributor"});
      list.push(b);
    }
    if (job.status === "Completed" && !isEval) {
      list.push(h("a", {class: "btn btn-primary", href: `#/models?from_job=${encodeURIComponent(job.id)}`,
        "data-testid": "register-job", "data-needs": "contributor"}, "Register model"));
    }
    if (!isEval) list.push(h("a", {class: "btn", "data-needs": "contributor", href: `#/jobs/new?model=${encodeURIComponent(job.base_model)}&training_data=${
      encodeURIComponent(job.training_data)}${job.validation_data ? "&validation_data=" + encodeURIComponent(job.validation_data) : ""}`},
    "New job like this"));
    replace(actions, list);
  }

  function latest(key) {
    for (let i = metrics.length - 1; i >= 0; i--) if (metrics[i][key] !== undefined) return metrics[i][key];
    return job.metrics ? job.metrics[key] : undefined;
  }

  function render() {
    replace(statusSlot, badge(job.status));
    renderActions();
    replace(errorSlot, job.error ? errorBox(job.error) : null);
    const p = job.progress || {};
    const frac = p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : null;
    const running = job.status === "Running";
    const stat = (label, value, extra) => h("div", {class: "stat"}, h("span", {class: "stat-label"}, label),
      h("span", {class: "stat-value"}, value), extra || null);
    replace(stats,
      stat(isEval ? "Scored" : "Step", p.max_steps ? `${p.step || 0} / ${p.max_steps}` : "–", frac === null ? null
        : h("div", {class: "bar"}, h("span", {style: {width: (frac * 100).toFixed(1) + "%"}}))),
      stat("Epoch", p.epoch !== undefined && p.epoch !== null ? fmtNum(p.epoch, 3) : "–"),
      stat("ETA", running && p.eta_s !== undefined && p.eta_s !== null ? fmtDuration(p.eta_s) : (job.status === "Completed" ? "done" : "–")),
      stat(FINAL.has(job.status) ? "Duration" : "Elapsed", fmtDuration(elapsed(job))),
      isEval ? null : [
        stat("Train loss", fmtNum(latest("train_loss"))),
        stat("Val. loss", fmtNum(latest("eval_loss"))),
        stat("Learn. rate", fmtNum(latest("learning_rate"), 3)),
        stat("Tokens / s", latest("train_tokens_per_second") !== undefined ? fmtNum(Math.round(latest("train_tokens_per_second"))) : "–")]);

    // one point per step: a resumed job logs again from its checkpoint's step, and the newer value wins
    const pts = (key) => {
      const byStep = new Map();
      for (const m of metrics) if (typeof m[key] === "number" && typeof m.step === "number") byStep.set(m.step, m[key]);
      return [...byStep].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({x, y}));
    };
    loss.update([
      {name: "training", tone: "a", points: pts("train_loss")},
      {name: "validation", tone: "b", points: pts("eval_loss"), markers: true},
    ]);
    lr.update([{name: "learning rate", tone: "c", points: pts("learning_rate")}]);
    tps.update([{name: "tokens/s", tone: "d", points: pts("train_tokens_per_second")}]);

    const hp = job.hyperparameters || {};
    replace(details, h("h2", {}, "Details"), kv([
      ["Job ID", h("code", {}, job.id)],
      [isEval ? "Model" : "Base model", h("span", {title: job.base_model}, shortModel(job.base_model))],
      [isEval ? "Data" : "Training data", dataLink(job.training_data)],
      isEval ? ["Baseline", job.validation_data ? shortModel(job.validation_data) : "none"]
        : ["Validation data", job.validation_data ? dataLink(job.validation_data) : "none"],
      ["Compute", job.compute],
      ["Created", fmtTime(job.created_at)],
      ["Started", fmtTime(job.started_at)],
      ["Finished", fmtTime(job.finished_at)],
      job.last_checkpoint ? ["Last checkpoint", h("code", {class: "break"}, job.last_checkpoint.split("/").pop())] : null,
      job.mlflow_run_id ? ["MLflow run", h("code", {}, job.mlflow_run_id)] : null,
      job.outputs && job.outputs.mlflow_model ? ["Output", h("code", {class: "break"}, job.outputs.mlflow_model)] : null,
    ]), h("details", {class: "settings"}, h("summary", {}, "Settings"),
      kv(Object.entries(hp).map(([k, v]) => [h("code", {}, k), v === null ? "none" : String(v)]))));
  }

  function dataLink(path) {
    const name = String(path).split("/").pop();
    return h("span", {title: path}, h("a", {href: hashFor("datasets", name)}, name));
  }

  function appendLog(text) {
    if (!text) return;
    const stick = logPre.scrollHeight - logPre.scrollTop - logPre.clientHeight < 24;
    logText += text;
    const lines = logText.split("\n");
    if (lines.length > LOG_KEEP) logText = lines.slice(-LOG_KEEP).join("\n");
    logPre.textContent = logText;
    if (stick) logPre.scrollTop = logPre.scrollHeight;
  }

  async function refresh() {
    const [j, rows, log] = await Promise.all([
      get(`/jobs/${seg(id)}`, {signal: ctx.signal}),
      get(`/jobs/${seg(id)}/metrics`, {query: {offset: metrics.length}, signal: ctx.signal}),
      get(`/jobs/${seg(id)}/logs`, {query: {offset: logOffset}, signal: ctx.signal}),
    ]);
    job = j;
    metrics.push(...rows);
    logOffset = log.next_offset;
    appendLog(log.text);
    render();
    if (isEval && job.status === "Completed" && evalHost.hidden) {
      evalHost.hidden = false;
      await showResult(evalHost, job.id, "Result", ctx.signal);
    }
    return !FINAL.has(job.status);
  }

  let following = false;
  function follow() {
    if (following) return;
    following = true;
    // keep reading while the job is alive, then once more after it ends for its last lines
    ctx.poll(async () => {
      const more = await refresh();
      if (!more) following = false;
      return more;
    }, ACTIVE_MS);
  }

  render();
  follow();
}
