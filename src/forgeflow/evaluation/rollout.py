"""Rollouts: a deployment's share of an endpoint's live traffic moved up in steps while its live metrics (and a
judge, when the condition names one) hold; promoted at 100%, or the split from before restored on a breach.

`RolloutService` starts one (any server: it checks the request and writes the row) and answers what one did.
`RolloutController` runs on the leader only (api/app.py starts it with the supervisor): every `poll_s` it reads
the running rollouts from the store and moves each on, so a new leader (or a restarted server) resumes a rollout
from its row: its step, that step's window start and its history are all there. Traffic changes go through the
endpoint service's own `update_endpoint` (the one writer of `endpoints`), each with an audit row.

A step: the deployment gets its percent, and the window starts (a reading of every live server's counters,
evaluation/rollout_window.py). Once the canary has had `min_requests` requests in the window and `step_seconds`
passed, the condition is checked on the window: true moves to the next step (after the last, promoted); false
restores the split. Within a step, clauses over error_rate are checked at every poll once a quarter of
min_requests came (a canary failing its requests goes back early). A step that has not had its requests after
`max_step_seconds` ends the rollout as stalled, the split restored. A deployment named in the condition that had
fewer than min_requests requests in the window (at 100%, the deployment it replaces) is compared by its figures of
the last window that had that many. With a judge, a step also waits for a sampled answer of each side taking
traffic, and the judge runs on a thread of its own with a deadline (evaluation/rollout_judge.py); a judge that
cannot score ends the rollout as Failed, the split restored.

A server that takes a running rollout over (a restart, a change of leader) starts the step's window again, and
while a deployment the step reads is not Succeeded (being placed again) the window waits: requests answered while
its instances start say nothing of it. A rollout whose step fails MAX_FAILURES polls in a row ends as Failed, the
split restored, with the error as its reason.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from forgeflow.errors import Conflict, ForgeflowError, InvalidInput
from forgeflow.evaluation import rollout_window
from forgeflow.evaluation.rollout_expr import Condition
from forgeflow.evaluation.rollout_judge import JUDGE_TIMEOUT_S, Judge, JudgeRun, check_judge
from forgeflow.evaluation.rollout_plan import RolloutSpec, check_spec, split
from forgeflow.evaluation.rollout_store import Rollouts
from forgeflow.serving.endpoints import EndpointService
from forgeflow.serving.samples import AnswerSamples
from forgeflow.store.audit import AuditLog
from forgeflow.store.leadership import live_loads
from forgeflow.store.db import now
from forgeflow.store.states import DeploymentState, RolloutState

log = logging.getLogger("forgeflow.rollout")

POLL_S = float(os.environ.get("FORGEFLOW_ROLLOUT_POLL_S", "1.0"))
MAX_FAILURES = 5  # polls in a row a rollout's step may fail before the rollout ends as Failed
# Which of the model's changes a rollout of the deployment allows: more or fewer instances of the same model.
SCALING = ("instance_count", "scale_settings")


class RolloutService:
    """Starting, cancelling and reading rollouts (the REST API's side; the leader's controller does the rest)."""

    def __init__(self, endpoints: EndpointService, samples: AnswerSamples | None = None,
                 server_id: Callable[[], str] = lambda: "local") -> None:
        self.endpoints = endpoints
        self.store = Rollouts(endpoints.store)
        self.samples = samples
        self.server_id = server_id

    def start(self, endpoint: str, body: dict[str, Any], user: str | None) -> dict:
        ep = self.endpoints.show_endpoint(endpoint)
        deps = {d["name"]: d["provisioning_state"] for d in self.endpoints.list_deployments(endpoint)}
        deployment = body.get("deployment")
        if not isinstance(deployment, str) or not deployment:
            raise InvalidInput("deployment is required: the deployment whose traffic the rollout moves up",
                               field="deployment")
        spec, condition = check_spec(body, deps, {k: v for k, v in ep["traffic"].items() if v}, deployment,
                                     ep["mirror_traffic"])
        if "judge" in condition.metrics:
            check_judge(spec.judge_flow, spec.judge_connection)
        previous = {k: int(v) for k, v in ep["traffic"].items()}
        return self.describe(self.store.create(endpoint, deployment, spec.row(), previous, user))

    def refuse_traffic_change(self, endpoint: str) -> None:
        """While a rollout moves the endpoint's traffic, nobody else does (409 naming traffic)."""
        if self.store.running(endpoint):
            raise Conflict(f"a rollout is moving endpoint {endpoint!r}'s traffic: let it finish, or stop it (the split "
                           f"from before comes back) with forgeflow online-endpoint rollout cancel --name {endpoint}",
                           field="traffic")

    def refuse_deployment_change(self, endpoint: str, deployment: str, sets: dict[str, Any]) -> None:
        """While a rollout moves a deployment's traffic, what it answers with stays (409 naming the deployment); more
        or fewer instances of it (instance_count, scale_settings) are fine."""
        running = self.store.running(endpoint)
        if running and running[0]["deployment"] == deployment and any(
                key.split(".")[0] not in SCALING for key in sets):
            raise Conflict(f"deployment {deployment!r} is being rolled out on endpoint {endpoint!r}: the rollout judges "
                           f"what it answers now, so it cannot change meanwhile (only instance_count and "
                           f"scale_settings can); cancel the rollout first with forgeflow online-endpoint rollout "
                           f"cancel --name {endpoint}, then update it and roll it out again", field="deployment")

    def cancel(self, endpoint: str) -> dict:
        self.endpoints.show_endpoint(endpoint)
        return self.describe(self.store.request_cancel(endpoint))

    def latest(self, endpoint: str) -> dict | None:
        row = self.store.latest(endpoint, self._since(endpoint))
        return None if row is None else self.describe(row)

    def _since(self, endpoint: str) -> str:
        """When the endpoint of this name was created: rollouts before that were of an endpoint deleted since."""
        return self.endpoints.show_endpoint(endpoint)["created_at"]

    def summary(self, endpoint: str) -> dict | None:
        """The running or last rollout in short, for the endpoint's own answer (`online-endpoint show`)."""
        row = self.store.latest(endpoint, self._since(endpoint))
        if row is None:
            return None
        plan = row["rollout_spec"]["plan"]
        return {"id": row["id"], "deployment": row["deployment"], "state": row["state"], "step": row["step_index"] + 1,
                "percent": plan[min(row["step_index"], len(plan) - 1)], "plan": plan, "reason": row.get("reason"),
                "created_at": row["created_at"], "finished_at": row.get("finished_at")}

    def history(self, endpoint: str) -> list[dict]:
        return [self.describe(row, live=False) for row in self.store.of_endpoint(endpoint, self._since(endpoint))]

    def describe(self, row: dict, live: bool = True) -> dict:
        """A rollout as the API shows it; a running one with its current step's figures so far."""
        spec = row["rollout_spec"]
        plan = spec["plan"]
        idx = row["step_index"]
        out = {"id": row["id"], "endpoint": row["endpoint"], "deployment": row["deployment"], "state": row["state"],
               "reason": row.get("reason"), "promote_if": spec["promote_if"], "plan": plan,
               "step": idx + 1, "percent": plan[min(idx, len(plan) - 1)], "min_requests": spec["min_requests"],
               "step_seconds": spec["step_seconds"], "max_step_seconds": spec["max_step_seconds"],
               "judge": ({"flow": spec["judge_flow"], "connection": spec["judge_connection"],
                          "sample": spec["judge_sample"]} if _judged(row) else None),
               "previous_traffic": row["previous_traffic"], "traffic": row.get("applied_traffic"),
               "cancel_requested": bool(row.get("cancel_requested")), "step_started_at": row.get("step_started_at"),
               "created_by": row.get("created_by"), "created_at": row["created_at"],
               "finished_at": row.get("finished_at"), "history": row["history"]}
        if live and row["state"] == RolloutState.RUNNING and row.get("window_start") is not None:
            now = rollout_window.reading(self.loads(), row["endpoint"])
            out["window"] = rollout_window.window(row["window_start"], now)
        return out

    def loads(self) -> dict[str, dict]:
        loads = live_loads(self.endpoints.store)
        loads[self.server_id()] = {"outcomes": self.endpoints.metrics.outcomes()}  # this server's, fresher
        return loads


def _judged(row: dict) -> bool:
    """Whether the rollout's condition names the judge (a row whose condition no longer reads: whether it names a
    judge flow or connection)."""
    spec = RolloutSpec.from_row(row["rollout_spec"])
    try:
        return "judge" in spec.condition(row["deployment"]).metrics
    except InvalidInput:
        return bool(spec.judge_flow or spec.judge_connection)


class RolloutController:
    """The leader's loop over the running rollouts (see the module's docstring)."""

    def __init__(self, service: RolloutService, judge: Judge | None = None, poll_s: float = POLL_S,
                 judge_timeout_s: float = JUDGE_TIMEOUT_S) -> None:
        self.service = service
        self.endpoints = service.endpoints
        self.rollouts = service.store
        self.audit = AuditLog(self.endpoints.store)
        self.judge = judge
        self.poll_s = poll_s
        self.judge_timeout_s = judge_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # By rollout id, for the rollouts running now: those this controller has seen (a rollout it meets already
        # in a step is one it takes over), its step's failures in a row, its judging under way.
        self._seen: set[str] = set()
        self._failures: dict[str, int] = {}
        self._judging: dict[str, JudgeRun] = {}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="forgeflow-rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._thread = None
        self._seen.clear()  # leading again later is taking the rollouts over again

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        """Move every running rollout on by what its window shows now."""
        try:
            rows = self.rollouts.running()
        except Exception:  # a busy or unreachable database: try again next poll
            log.exception("could not read the running rollouts")
            return
        watched, running = set(), set()
        for row in rows:
            try:
                row = self._step(row)
                self._failures.pop(row["id"], None)
                if row["state"] == RolloutState.RUNNING:
                    running.add(row["id"])
                    watched |= self._watch(row)
            except Exception as e:
                log.exception("rollout %s on endpoint %s could not move on", row["id"], row["endpoint"])
                if self._failed(row, e) == RolloutState.RUNNING:
                    running.add(row["id"])
        for kept in (self._failures, self._judging):
            for gone in set(kept) - running:
                del kept[gone]
        self._seen &= running
        if self.service.samples is not None:
            self.service.samples.keep_only(watched)

    def _failed(self, row: dict, error: Exception) -> str:
        """Count a step's failure; at MAX_FAILURES in a row the rollout ends as Failed, the split restored. The
        rollout's state after."""
        count = self._failures[row["id"]] = self._failures.get(row["id"], 0) + 1
        if count < MAX_FAILURES:
            return RolloutState.RUNNING
        why = f"the rollout could not move on ({count} tries in a row): " + (
            error.message if isinstance(error, ForgeflowError) else f"{type(error).__name__}: {error}")[:500]
        try:
            row = self.rollouts.get(row["id"])
            if row["state"] != RolloutState.RUNNING:
                return row["state"]
            return self._restore(row, RolloutState.FAILED, why, {"event": "failed", "why": why})["state"]
        except Exception:  # the database itself: the next poll tries again
            log.exception("rollout %s could not be ended as failed", row["id"])
            return RolloutState.RUNNING

    # -- one rollout -----------------------------------------------------------------------
    def _step(self, row: dict) -> dict:
        spec = RolloutSpec.from_row(row["rollout_spec"])
        endpoint, deployment = row["endpoint"], row["deployment"]
        if row.get("cancel_requested"):
            return self._restore(row, RolloutState.CANCELED, "canceled on request", {"event": "canceled"})
        try:
            ep = self.endpoints.show_endpoint(endpoint)
        except ForgeflowError as e:
            return self.rollouts.finish(row, RolloutState.FAILED, e.message, {"event": "failed", "why": e.message})
        if ep["created_at"] > row["created_at"]:
            why = f"endpoint {endpoint!r} was deleted (and created again) during the rollout"
            return self.rollouts.finish(row, RolloutState.FAILED, why, {"event": "failed", "why": why})
        if deployment not in ep["deployments"]:
            why = f"deployment {deployment!r} was deleted during the rollout"
            return self._restore(row, RolloutState.FAILED, why, {"event": "failed", "why": why})
        if row.get("step_started_at") is None:
            self._seen.add(row["id"])
            try:
                return self._begin_step(row, spec)
            except ForgeflowError as e:  # the endpoint refused the split (its deployments changed meanwhile)
                why = f"step {row['step_index'] + 1} could not be taken: {e.message}"
                return self._restore(row, RolloutState.FAILED, why, {"event": "failed", "why": why})
        if {k: v for k, v in ep["traffic"].items() if v} != {k: v for k, v in row["applied_traffic"].items() if v}:
            why = (f"the endpoint's traffic was changed outside the rollout (to {ep['traffic']}); the rollout stops "
                   "and leaves it as it is")
            return self.rollouts.finish(row, RolloutState.CANCELED, why, {"event": "canceled", "why": why})
        if row["id"] not in self._seen:  # taken over: what came before (the old leader's, a failover) is not this step's
            self._seen.add(row["id"])
            return self.rollouts.advance(row, self._fresh_window(endpoint) | {"step_started_at": now()}, {
                "event": "resumed", "step": row["step_index"] + 1,
                "why": "this server took the rollout over (a restart or a change of leader): the step starts again"})
        condition = spec.condition(deployment)
        sides = ({deployment} | condition.deployments) & {k for k, v in row["applied_traffic"].items() if v}
        states = {d["name"]: d["provisioning_state"] for d in self.endpoints.list_deployments(endpoint)}
        if any(states.get(name, DeploymentState.SUCCEEDED) != DeploymentState.SUCCEEDED for name in sides):
            return self.rollouts.advance(row, self._fresh_window(endpoint))  # its window waits while it is placed
        figures = rollout_window.window(row["window_start"],
                                        rollout_window.reading(self.service.loads(), endpoint))
        canary = figures.get(deployment) or rollout_window.figures(0, 0, [], [])
        requests = int(canary["requests"] or 0)
        elapsed = time.time() - datetime.fromisoformat(row["step_started_at"]).timestamp()
        percent = spec.plan[row["step_index"]]
        counted = requests >= spec.min_requests and elapsed >= spec.step_seconds
        # A deployment the condition compares with needs figures of its own in this window, or earlier ones.
        reference = row.get("reference_metrics") or {}
        waiting = [name for name in sorted(condition.deployments - {deployment})
                   if not (figures.get(name) or {}).get("requests") and name not in reference]
        ready = counted and not waiting
        unsampled = self._unsampled(row, condition, sides) if ready else []
        if elapsed >= spec.max_step_seconds and (not ready or unsampled) and row["id"] not in self._judging:
            why = (f"step {row['step_index'] + 1} ({percent}%) had {requests} of its min_requests "
                   f"{spec.min_requests} requests after max_step_seconds {spec.max_step_seconds:g}" if not counted else
                   f"step {row['step_index'] + 1} ({percent}%): no request reached {', '.join(waiting)} (compared in "
                   f"promote_if) after max_step_seconds {spec.max_step_seconds:g}" if waiting else
                   f"step {row['step_index'] + 1} ({percent}%): no sampled answer from {', '.join(unsampled)} after "
                   f"max_step_seconds {spec.max_step_seconds:g} (streamed or non-chat answers and other servers' "
                   "requests are not sampled)")
            return self._restore(row, RolloutState.STALLED, why, {"event": "stalled", "why": why,
                                                                  "figures": figures})
        if requests >= max(1, math.ceil(spec.min_requests / 4)):
            breached = condition.early_breach(figures, deployment)
            if breached:
                return self._roll_back(row, percent, figures, breached)
        if not ready or unsampled:
            return row
        if "judge" not in condition.metrics:
            return self._check(row, spec, condition, figures, percent, None)
        return self._judged(row, spec, condition, figures, percent)

    def _fresh_window(self, endpoint: str) -> dict:
        return {"window_start": rollout_window.reading(self.service.loads(), endpoint)}

    def _begin_step(self, row: dict, spec: RolloutSpec) -> dict:
        percent = spec.plan[row["step_index"]]
        traffic = split(row["previous_traffic"], row["deployment"], percent)
        window_start = rollout_window.reading(self.service.loads(), row["endpoint"])
        self._set_traffic(row, traffic, f"step {row['step_index'] + 1}: {percent}% to {row['deployment']}")
        return self.rollouts.advance(row, {"applied_traffic": traffic, "window_start": window_start,
                                           "step_started_at": now()},
                                     {"event": "step", "step": row["step_index"] + 1, "percent": percent,
                                      "traffic": traffic})

    def _judged(self, row: dict, spec: RolloutSpec, condition: Condition, figures: dict, percent: int) -> dict:
        """The step's check once the judge has scored its samples: the judging starts (on its own thread) at the
        first poll, later polls wait for it; a judge that fails or outlives its deadline ends the rollout."""
        run = self._judging.get(row["id"])
        if run is None:
            samples = self.service.samples
            sides = {row["deployment"]} | condition.deployments
            items = {name: samples.take((row["endpoint"], name)) if samples else [] for name in sides}
            if self.judge is None:
                return self._check(row, spec, condition, figures, percent, ({}, items))
            self._judging[row["id"]] = JudgeRun(self.judge, spec, items, self.judge_timeout_s)
            return row
        if run.late():
            del self._judging[row["id"]]
            why = f"the judge could not score: it had not answered after {run.timeout_s:g} seconds"
            return self._restore(row, RolloutState.FAILED, why, {"event": "failed", "why": why})
        if not run.done():
            return row
        del self._judging[row["id"]]
        if run.error is not None or run.scores is None:
            why = f"the judge could not score: {run.error}"
            return self._restore(row, RolloutState.FAILED, why, {"event": "failed", "why": why})
        return self._check(row, spec, condition, figures, percent, (run.scores, run.items))

    def _check(self, row: dict, spec: RolloutSpec, condition: Condition, figures: dict, percent: int,
               judged: tuple[dict, dict] | None) -> dict:
        deployment = row["deployment"]
        reference = dict(row.get("reference_metrics") or {})
        for name in condition.deployments - {deployment}:
            # Its own window's figures once they rest on min_requests requests; else (at 100%, the deployment
            # replaced answers next to nothing; or it was deleted) those of the last window that had as many.
            if (figures.get(name) or {}).get("requests", 0) >= spec.min_requests or name not in reference:
                if (figures.get(name) or {}).get("requests"):
                    reference[name] = figures[name]
            else:
                figures[name] = reference[name] | {"from_earlier_window": True}
        if judged is not None:
            self._scores(figures, reference, *judged)
        ok, clauses = condition.evaluate(figures, deployment)
        event = {"event": "check", "step": row["step_index"] + 1, "percent": percent, "passed": ok,
                 "clauses": clauses, "figures": figures}
        if not ok:
            return self._roll_back(row, percent, figures, [c for c in clauses if not c["passed"]], event)
        row = self.rollouts.advance(row, {"reference_metrics": reference}, event)
        if row["step_index"] + 1 >= len(spec.plan):
            return self.rollouts.finish(row, RolloutState.PROMOTED, None, {
                "event": "promoted", "traffic": row["applied_traffic"],
                "why": f"{deployment} held '{spec.promote_if}' at every step; it takes 100% of the traffic"})
        row = self.rollouts.advance(row, {"step_index": row["step_index"] + 1, "step_started_at": None})
        return self._begin_step(row, spec)

    def _unsampled(self, row: dict, condition: Condition, sides: set[str]) -> list[str]:
        """The sides taking traffic of which the judge has no sampled answer yet (none without a judge)."""
        samples = self.service.samples
        if "judge" not in condition.metrics or samples is None:
            return []
        return sorted(name for name in sides if not samples.count((row["endpoint"], name)))

    @staticmethod
    def _scores(figures: dict, reference: dict, scores: dict, items: dict) -> None:
        """Each side's mean judge score of its answers sampled in this step (None: none sampled)."""
        for name in items:
            entry = figures.setdefault(name, rollout_window.figures(0, 0, [], []))
            score = scores.get(name)
            if score is None and name in reference and "judge" in reference[name]:
                entry["judge"] = reference[name]["judge"]
            else:
                entry["judge"] = score
                entry["judged"] = len(items.get(name) or [])
                if score is not None and name in reference:
                    reference[name]["judge"] = score

    def _roll_back(self, row: dict, percent: int, figures: dict, failed: list[dict],
                   event: dict | None = None) -> dict:
        why = "; ".join(f"{c['clause']} failed with " + ", ".join(f"{k}={_show(v)}" for k, v in c["values"].items())
                        for c in failed)
        why = f"step {row['step_index'] + 1} ({percent}%): {why}"
        if event is not None:
            row = self.rollouts.advance(row, {}, event)
        return self._restore(row, RolloutState.ROLLED_BACK, why, {"event": "rolled_back", "why": why,
                                                                   "figures": figures})

    def _restore(self, row: dict, state: RolloutState, why: str, event: dict) -> dict:
        """The split from before the rollout back (when the rollout changed it), then the rollout ended."""
        if row.get("applied_traffic") is not None:
            try:
                self._set_traffic(row, row["previous_traffic"], f"{state}: {why}")
            except ForgeflowError as e:  # e.g. a deployment of the old split was deleted meanwhile
                why = f"{why}; the split from before could not be restored: {e.message}"
                return self.rollouts.finish(row, RolloutState.FAILED, why, event | {"why": why})
        return self.rollouts.finish(row, state, why, event | {"traffic": row["previous_traffic"]})

    def _set_traffic(self, row: dict, traffic: dict[str, int], why: str) -> None:
        self.endpoints.update_endpoint(row["endpoint"], traffic=traffic)
        self.audit.record("rollout: traffic", status=200, user=row.get("created_by"), target=row["endpoint"],
                          detail={"rollout": row["id"], "traffic": traffic, "why": why[:500]})

    def _watch(self, row: dict) -> set:
        """The deployments whose answers the gateway samples for this rollout's judge."""
        spec = RolloutSpec.from_row(row["rollout_spec"])
        condition = spec.condition(row["deployment"])
        if "judge" not in condition.metrics or self.service.samples is None:
            return set()
        keys = {(row["endpoint"], name) for name in condition.deployments | {row["deployment"]}}
        for key in keys:
            self.service.samples.watch(key, spec.judge_sample)
        return keys


def _show(value: Any) -> str:
    return "none (no data)" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
