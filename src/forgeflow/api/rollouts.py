"""Rollouts of an endpoint's deployment (evaluation/rollout.py): start one, read where it is and why, cancel it. The
leader's controller moves it on; any server starts, reads and cancels."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from forgeflow.api.security import CONTRIBUTOR, PRINCIPAL, READER, audit_detail, services
from forgeflow.errors import NotFound
from forgeflow.evaluation import rollout_plan as plan

router = APIRouter(tags=["endpoints"])


class RolloutCreate(BaseModel, extra="forbid"):
    deployment: str = Field(description="The deployment whose share of the live traffic moves up.")
    canary: int = Field(plan.DEFAULT_CANARY, description="Its first share, in percent (1-99), taken from the other "
                        "deployments in proportion to what they had.")
    steps: list[int] = Field(list(plan.DEFAULT_STEPS), description="The shares after the canary, increasing and "
                             "ending at 100 (such as [10, 50, 100]; a first step equal to the canary is the canary).")
    promote_if: str = Field(description="The condition each step must hold, such as \"error_rate<0.01 and "
                            "p95_latency_ms<1.2*blue and judge>=blue\": metrics error_rate, requests, p50_latency_ms, "
                            "p95_latency_ms, p99_latency_ms, ttft_p95_ms, judge; a deployment's name is its value "
                            "of the metric it is compared with.")
    min_requests: int = Field(plan.DEFAULT_MIN_REQUESTS, description="Requests the deployment must get in a step "
                              "before the condition is checked.")
    step_seconds: float = Field(plan.DEFAULT_STEP_SECONDS, description="The least time a step lasts.")
    max_step_seconds: float = Field(plan.DEFAULT_MAX_STEP_SECONDS, description="A step without its min_requests "
                                    "after this long ends the rollout as stalled (the split from before restored).")
    judge_flow: str | None = Field(None, description="A judge flow's folder on the server (default: the shipped "
                                   "judge-answer flow), when promote_if uses judge.")
    judge_connection: str | None = Field(None, description="The connection the judge flow's llm nodes use instead "
                                         "of their own.")
    judge_sample: int = Field(plan.DEFAULT_JUDGE_SAMPLE, description="Answers of each side the judge scores per "
                              "step (a uniform sample of the step's answers).")


@router.post("/endpoints/{name}/rollouts", status_code=201, dependencies=CONTRIBUTOR)
def start_rollout(name: str, body: RolloutCreate, request: Request, ff=Depends(services)) -> dict:
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    rollout = ff.rollouts.start(name, body.model_dump(), principal.user if principal else None)
    audit_detail(request, rollout=rollout["id"], deployment=body.deployment)
    return rollout


@router.get("/endpoints/{name}/rollouts", dependencies=READER)
def list_rollouts(name: str, ff=Depends(services)) -> list[dict]:
    """The endpoint's rollouts, newest first, each with its history."""
    return ff.rollouts.history(name)


@router.get("/endpoints/{name}/rollouts/current", dependencies=READER)
def current_rollout(name: str, ff=Depends(services)) -> dict:
    """The running rollout (with its step's figures so far), else the last one."""
    ff.endpoints.show_endpoint(name)
    rollout = ff.rollouts.latest(name)
    if rollout is None:
        raise NotFound(f"endpoint {name!r} has had no rollout: start one with forgeflow online-endpoint rollout "
                       f"--name {name} --deployment NAME --promote-if CONDITION")
    return rollout


@router.post("/endpoints/{name}/rollouts/current/cancel", dependencies=CONTRIBUTOR)
def cancel_rollout(name: str, ff=Depends(services)) -> dict:
    """Stop the running rollout: the leader restores the split from before it within a poll."""
    return ff.rollouts.cancel(name)
