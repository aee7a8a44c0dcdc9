// An evaluation side by side: each metric for the model and its baseline with their intervals, the difference,
// and how many rows got better or worse; under a job's result, the rows that got worse. Used by the model version
// page (the version's newest evaluation) and the job page (an evaluation job, or a fine-tune evaluated against its
// base).

import {ApiError, get, seg} from "./api.js";
import {errorBox, fmtNum, h, hashFor, note, replace, table} from "./dom.js";

const WORSE_SHOWN = 20;

function withCi(metrics, key, ciKey = key + "_ci") {
  if (!metrics || metrics[key] === undefined || metrics[key] === null) return "–";
  const ci = metrics[ciKey];
  return Array.isArray(ci) && ci.length === 2
    ? h("span", {}, fmtNum(metrics[key]), h("span", {class: "muted small"}, ` [${fmtNum(ci[0])}, ${fmtNum(ci[1])}]`))
    : fmtNum(metrics[key]);
}

/** The side-by-side table: one row per metric the model has. */
export function comparisonTable(modelMetrics, baselineMetrics, comparison) {
  const keys = Object.keys(modelMetrics || {}).filter((k) => !k.endsWith("_ci") && typeof modelMetrics[k] === "number");
  const cmp = comparison || {};
  return h("div", {"data-testid": "evaluation-table"}, table([
    {label: "Metric", render: (k) => h("code", {}, k)},
    {label: "Model", cls: "num", render: (k) => withCi(modelMetrics, k)},
    {label: "Baseline", cls: "num", render: (k) => withCi(baselineMetrics, k)},
    {label: "Δ (model − baseline)", cls: "num", render: (k) => (cmp[k] ? withCi(cmp[k], "delta") : "–")},
    {label: "Rows", render: (k) => (cmp[k] ? `${cmp[k].better} better / ${cmp[k].worse} worse` : "–")},
  ], keys, {empty: "No metrics."}));
}

/** A version's evaluation (the registry's summary of it). */
export function summaryCard(summary) {
  return h("section", {class: "card", "data-testid": "version-evaluation"},
    h("div", {class: "card-head"}, h("h2", {}, "Evaluation"),
      h("a", {href: hashFor("jobs", summary.job)}, summary.job)),
    h("p", {class: "muted small"}, summary.baseline ? `Against ${summary.baseline}` : "No baseline",
      ` on ${String(summary.data || "").split("/").pop()}`,
      summary.mlflow_run_id ? h("span", {"data-testid": "evaluation-run"}, "; metrics and result in MLflow run ",
        h("code", {}, summary.mlflow_run_id)) : ""),
    comparisonTable(summary.model_metrics, summary.baseline_metrics, summary.comparison));
}

/** An evaluation job's result.json: the table and the rows that got worse. */
export function resultView(result) {
  const worse = (result.rows || []).filter((r) => r.change === "worse");
  const answer = (side) => (r) => h("span", {class: "break"}, (r[side] && r[side].answer) || "–");
  return [
    h("p", {class: "muted small"}, `${result.model.ref}`, result.baseline ? ` vs ${result.baseline.ref}` : "",
      ` on ${(result.rows || []).length} rows of ${String(result.data || "").split("/").pop()}`),
    comparisonTable(result.model.metrics, result.baseline && result.baseline.metrics, result.comparison),
    result.baseline ? h("h3", {}, `Rows that got worse (${worse.length})`) : null,
    result.baseline ? table([
      {label: "Line", cls: "num", render: (r) => String(r.line)},
      {label: "Question", render: (r) => h("span", {class: "break"}, r.question || "")},
      {label: "Reference", render: (r) => h("span", {class: "break"}, r.reference || "")},
      {label: "Model", render: answer("model")},
      {label: "Baseline", render: answer("baseline")},
    ], worse.slice(0, WORSE_SHOWN), {empty: "No row got worse."}) : null,
  ];
}

/** Fill `host` with the result of evaluation job `id`; a note while it has none. Whether it had one. */
export async function showResult(host, id, title, signal) {
  try {
    const result = await get(`/evaluations/${seg(id)}`, {signal});
    replace(host, h("div", {class: "card-head"}, h("h2", {}, title), h("a", {href: hashFor("jobs", id)}, id)),
      ...resultView(result));
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 409) {
      replace(host, h("div", {class: "card-head"}, h("h2", {}, title), h("a", {href: hashFor("jobs", id)}, id)),
        note(e.message));
      return false;
    }
    if (e.name !== "AbortError") replace(host, h("h2", {}, title), errorBox(e));
    return false;
  }
}
