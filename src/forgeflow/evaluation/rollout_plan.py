"""What a rollout is asked to do, checked once at the edge (each wrong field a 400 naming it), and the splits it
moves through: the canary's percent first, then each step's, taken from the other deployments in proportion to
what they had.

Defaults: --canary 10, --step 100 (so 10% then 100%), --min-requests 100 in each step, no minimum hold
(--step-seconds 0), and a step that has not had its requests within --max-step-seconds (1800, half an hour) ends
the rollout as stalled, restoring the split from before. A judge scores --judge-sample (20) answers of each side per
step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from forgeflow.errors import Conflict, InvalidInput
from forgeflow.evaluation.rollout_expr import FIELD, Condition, parse_condition
from forgeflow.names import client_path
from forgeflow.store.states import DeploymentState

DEFAULT_CANARY = 10
DEFAULT_STEPS = (100,)
DEFAULT_MIN_REQUESTS = 100
DEFAULT_STEP_SECONDS = 0.0
DEFAULT_MAX_STEP_SECONDS = 1800.0
DEFAULT_JUDGE_SAMPLE = 20
MAX_JUDGE_SAMPLE = 200
MAX_STEPS = 20


@dataclass(frozen=True)
class RolloutSpec:
    """A checked rollout request, as its row keeps it (`rollout_spec`)."""

    canary: int
    plan: list[int]  # the percents in turn: the canary's, then each step's; the last is 100
    promote_if: str
    min_requests: int
    step_seconds: float
    max_step_seconds: float
    judge_flow: str | None
    judge_connection: str | None
    judge_sample: int
    # The deployments promote_if names, resolved once when the rollout started: the condition reads the same
    # deployments for the whole rollout, and one deleted since is unknown (its last figures), never an error.
    compared: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RolloutSpec:
        return cls(**row)

    def condition(self, canary: str) -> Condition:
        """promote_if as it was checked at the start, over the deployments it named then."""
        return parse_condition(self.promote_if, [*self.compared, canary], canary)


def check_spec(body: dict[str, Any], deployments: dict[str, str], traffic: dict[str, int], deployment: str,
               mirror: dict[str, int] | None = None) -> tuple[RolloutSpec, Condition]:
    """The request checked against the endpoint (its deployments' names -> states, its traffic split and mirror)."""
    if deployment not in deployments:
        known = ", ".join(sorted(deployments)) or "none"
        raise InvalidInput(f"the endpoint has no deployment {deployment!r} (it has: {known}); create it first with "
                           "forgeflow online-deployment create", field="deployment")
    if deployments[deployment] != DeploymentState.SUCCEEDED:
        raise Conflict(f"deployment {deployment!r} is {deployments[deployment]}: a rollout starts once it has "
                       "settled as Succeeded", field="deployment")
    if sum(traffic.values()) != 100:
        raise Conflict("the endpoint takes no live traffic (its split adds up to 0): set one first with forgeflow "
                       "online-endpoint update --traffic NAME=100", field="traffic")
    if (mirror or {}).get(deployment):
        raise Conflict(f"deployment {deployment!r} takes mirrored traffic, which a deployment with live traffic cannot: "
                       f"stop it first with forgeflow online-endpoint update --mirror-traffic {deployment}=0",
                       field="deployment")
    if traffic.get(deployment, 0) >= 100:
        raise Conflict(f"deployment {deployment!r} already takes all the traffic", field="deployment")
    canary = _whole(body.get("canary", DEFAULT_CANARY), "canary", 1, 99)
    steps = body.get("steps")
    steps = list(DEFAULT_STEPS) if steps is None else steps
    if not isinstance(steps, list) or not steps or len(steps) > MAX_STEPS:
        raise InvalidInput(f"steps must be a list of 1 to {MAX_STEPS} percents ending at 100, such as 10,50,100",
                           field="steps")
    steps = [_whole(s, "steps", 1, 100) for s in steps]
    if any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] != 100:
        raise InvalidInput(f"steps must increase and end at 100, got {','.join(map(str, steps))}", field="steps")
    if steps[0] < canary:
        raise InvalidInput(f"steps start at {steps[0]}%, below the canary's {canary}%: each step gives the "
                           "deployment more traffic than the one before", field="steps")
    plan = steps if steps[0] == canary else [canary, *steps]
    condition = parse_condition(body.get("promote_if") or "", deployments, deployment)
    idle = sorted(name for name in condition.deployments - {deployment} if not traffic.get(name))
    if idle:
        raise InvalidInput(f"promote_if compares with deployment {idle[0]!r}, which takes no traffic now (0%), so it "
                           f"would have no figures to compare with: compare with a deployment that takes traffic "
                           f"({', '.join(sorted(traffic))}) or with a number", field=FIELD)
    min_requests = _whole(body.get("min_requests", DEFAULT_MIN_REQUESTS), "min_requests", 1, 10_000_000)
    step_seconds = _seconds(body.get("step_seconds", DEFAULT_STEP_SECONDS), "step_seconds")
    max_step = _seconds(body.get("max_step_seconds", DEFAULT_MAX_STEP_SECONDS), "max_step_seconds")
    if max_step <= step_seconds:
        raise InvalidInput(f"max_step_seconds ({max_step:g}) must be longer than step_seconds ({step_seconds:g})",
                           field="max_step_seconds")
    judge_sample = _whole(body.get("judge_sample", DEFAULT_JUDGE_SAMPLE), "judge_sample", 1, MAX_JUDGE_SAMPLE)
    flow, connection = body.get("judge_flow"), body.get("judge_connection")
    if "judge" not in condition.metrics:
        for name, value in (("judge_flow", flow), ("judge_connection", connection)):
            if value is not None:
                raise InvalidInput(f"{name} is given but promote_if uses no judge: add a clause such as "
                                   "judge>=blue, or leave it out", field=name)
    for name, value in (("judge_flow", flow), ("judge_connection", connection)):
        if value is not None and (not isinstance(value, str) or not value.strip() or "\x00" in value):
            raise InvalidInput(f"{name} must be a non-empty string", field=name)
    if flow is not None:
        flow = _absolute(flow)
    spec = RolloutSpec(canary=canary, plan=plan, promote_if=condition.text, min_requests=min_requests,
                       step_seconds=step_seconds, max_step_seconds=max_step, judge_flow=flow,
                       judge_connection=connection, judge_sample=judge_sample,
                       compared=sorted(condition.deployments))
    return spec, condition


def split(previous: dict[str, int], deployment: str, percent: int) -> dict[str, int]:
    """`previous` with `deployment` at `percent`, the rest shared by the others in proportion to what they had
    (largest remainders, so the split adds up to 100)."""
    others = {k: v for k, v in previous.items() if k != deployment and v > 0}
    left = 100 - percent
    total = sum(others.values())
    out = {k: 0 for k in previous}
    out[deployment] = percent
    if not total:
        return out
    exact = {k: v * left / total for k, v in others.items()}
    floors = {k: int(x) for k, x in exact.items()}
    spare = left - sum(floors.values())
    for k in sorted(exact, key=lambda k: (floors[k] - exact[k], k))[:spare]:
        floors[k] += 1
    return out | floors


def _absolute(flow: str) -> str:
    """judge_flow as an absolute path on this server: the leader that runs the judge (maybe another process, started
    elsewhere) reads the folder the request meant."""
    return str(client_path(flow, "judge_flow"))


def _whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}, got {value!r}", field=name)
    return value


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 7 * 86400:
        raise InvalidInput(f"{name} must be a number of seconds from 0 to a week, got {value!r}", field=name)
    return float(value)
