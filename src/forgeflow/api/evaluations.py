"""Evaluations: a model against its baseline on held-out chat rows, run as a job (type `evaluation`).

The body is validated here, once, before anything is queued: both models resolve (archived versions too: an
evaluation only reads them), the rows it will use are valid chat rows (a problem named with its line), every metric
is known, max_new_tokens leaves room for a prompt in each model's context, and a judge has a flow whose connections
exist. The job then shows in the jobs list like a fine-tune (progress, cancel, resume); its result is
GET /api/evaluations/{job}."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from forgeflow.api.jobs import existing_file, job_view
from forgeflow.api.security import CONTRIBUTOR, READER, audit_target, services
from forgeflow.chat.wire import Closed
from forgeflow.errors import ForgeflowError, InvalidInput, NotFound
from forgeflow.evaluation.judge import DEFAULT_JUDGE_FLOW, judge_flow
from forgeflow.evaluation.metrics import GENERATION_METRICS
from forgeflow.evaluation.scoring import model_context, read_rows
from forgeflow.names import client_path
from forgeflow.training.jobs import DEFAULT_EVALUATION_METRICS, EVALUATION_METRICS, EvaluatedModel

router = APIRouter(tags=["evaluations"])

JUDGE = "judge"


class EvaluationRequest(Closed):
    """The body of POST /api/evaluations (and what `forgeflow model evaluate` sends); a key it does not list is a
    400 naming it."""

    model: str = Field(description="The model evaluated: NAME:VERSION, a base model's name, NAME@ALIAS or a folder.")
    baseline: str | None = Field(None, description="The model it is compared with, on the same rows (same forms).")
    data: str = Field(description="Held-out chat JSONL: each row's last assistant message is the reference answer.")
    metrics: list[str] | None = Field(None, description="Any of loss, exact_match, f1, rouge_l, judge (default: all "
                                                        "but judge).")
    judge_flow: str | None = Field(None, description="A Prompt-flow-style evaluation flow folder scoring an answer "
                                                     "(default: the bundled judge-answer flow).")
    judge_connection: str | None = Field(None, description="The connection the judge flow's llm nodes use instead "
                                                           "of the ones they name (default: theirs).")
    max_new_tokens: int = Field(128, gt=0, le=4096, description="Tokens generated per answer.")
    max_rows: int | None = Field(None, gt=0, le=10**9, description="Evaluate only the first N rows.")
    compute: str = Field("local", description="Compute target to run on (see: forgeflow compute list).")
    name: str | None = Field(None, max_length=200, description="Display name of the job.")


def _model(ref: str, field: str) -> EvaluatedModel:
    """A model reference resolved to the folder its worker loads, an error naming `field` (model or baseline)."""
    from forgeflow.registry.resolve import resolve_model

    try:
        canonical, path = resolve_model(ref, allow_archived=True)
    except ForgeflowError as exc:
        if exc.field == field:
            raise
        raise type(exc)(f"{field} {ref!r}: {exc.message}", field=field) from None
    return EvaluatedModel(canonical, str(path))


def _metrics(given: list[str] | None) -> tuple[str, ...]:
    if given is None:
        return DEFAULT_EVALUATION_METRICS
    names = [str(m).strip() for m in given]
    unknown = [m for m in names if m not in EVALUATION_METRICS]
    if unknown or not names:
        what = f"unknown metric {unknown[0]!r}" if unknown else "metrics is empty"
        raise InvalidInput(f"{what}: valid metrics are {', '.join(EVALUATION_METRICS)}", field="metrics")
    return tuple(dict.fromkeys(names))


def _check_context(models: list[EvaluatedModel], max_new_tokens: int) -> None:
    """Generated answers need room for a prompt: max_new_tokens below each model's context (its config's
    max_position_embeddings, read without loading weights; the worker checks again once it has loaded them)."""
    for model in models:
        context = model_context(model.path)
        if context is not None and max_new_tokens >= context:
            raise InvalidInput(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the context of "
                               f"{model.ref} ({context} tokens): pass max_new_tokens below {context}, e.g. "
                               f"{min(128, context // 2)}", field="max_new_tokens")


def _judge(body: EvaluationRequest, metrics: tuple[str, ...], ff) -> tuple[str | None, str | None]:
    """The judge's flow folder and connection, checked; neither may be given without the judge metric. The
    connection is optional: given, it replaces the flow's llm nodes' connections (a flow without llm nodes then is
    a 400 naming judge_connection); not given, each llm node's own connection must exist."""
    if JUDGE not in metrics:
        for field in ("judge_flow", "judge_connection"):
            if getattr(body, field) is not None:
                raise InvalidInput(f"{field} is only used by the judge metric, which this evaluation does not ask "
                                   f"for: add judge to metrics, or leave {field} out", field=field)
        return None, None
    if ff.runner.targets.get(body.compute).get("type") == "ray":
        raise InvalidInput(f"the judge metric runs on a local compute target only: compute {body.compute!r} is a "
                           "Ray target, whose nodes cannot reach this workspace's connections; run a judged "
                           "evaluation with --compute local (or leave judge out of metrics)", field="compute")
    if body.judge_connection is not None:
        _connection_exists(ff, body.judge_connection, "the judge")
    flow = client_path(body.judge_flow, "judge_flow") if body.judge_flow else DEFAULT_JUDGE_FLOW
    if not flow.is_dir():
        raise NotFound(f"judge flow folder {flow} does not exist", field="judge_flow")
    try:
        loaded = judge_flow(flow, body.judge_connection)
    except ForgeflowError as exc:
        if exc.field in ("judge_flow", "judge_connection"):
            raise
        raise InvalidInput(f"judge flow {flow}: {exc.message}", field="judge_flow") from None
    if body.judge_connection is None:
        for node in (n for n in loaded.nodes.values() if n.type == "llm"):
            if not node.connection:
                raise InvalidInput(f"the judge flow's llm node {node.name!r} names no connection: pass "
                                   "judge_connection (see: forgeflow connection list)", field="judge_connection")
            _connection_exists(ff, node.connection, f"the judge flow's llm node {node.name!r}", missing=InvalidInput)
    return str(flow), body.judge_connection


def _connection_exists(ff, name: str, user: str, missing: type[ForgeflowError] = NotFound) -> None:
    try:
        ff.connections.show(name)
    except NotFound:
        raise missing(f"no connection {name!r} for {user}: create it with forgeflow connection create, or pass "
                      "judge_connection naming one from forgeflow connection list", field="judge_connection") from None


@router.post("/evaluations", status_code=201, dependencies=CONTRIBUTOR)
def create_evaluation(body: EvaluationRequest, request: Request, ff=Depends(services)) -> dict:
    """Queue an evaluation job; the answer is the job (follow it at /api/jobs/{id})."""
    metrics = _metrics(body.metrics)
    model = _model(body.model, "model")
    baseline = _model(body.baseline, "baseline") if body.baseline else None
    if any(m in metrics for m in (*GENERATION_METRICS, JUDGE)):
        _check_context([model] + ([baseline] if baseline else []), body.max_new_tokens)
    data = existing_file(body.data, "data")
    try:
        read_rows(data, body.max_rows)  # what the worker reads (only the rows it uses): a prompt before each answer
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="data") from None
    judge_flow, judge_connection = _judge(body, metrics, ff)
    job = ff.runner.submit_evaluation(
        model=model, baseline=baseline, data=str(data), metrics=metrics, judge_flow=judge_flow,
        judge_connection=judge_connection, max_new_tokens=body.max_new_tokens, max_rows=body.max_rows,
        name=body.name, compute=body.compute)
    audit_target(request, job.id)
    return job_view(job)


@router.get("/evaluations/{job_id}", dependencies=READER)
def show_evaluation(job_id: str, ff=Depends(services)) -> dict:
    """The result of a Completed evaluation (result.json: both models' metrics with intervals, the comparison and
    every row); 409 naming its status while it has none."""
    return ff.runner.evaluation_result(job_id)
