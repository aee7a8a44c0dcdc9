"""Jobs: fine-tuning jobs made here, evaluation jobs (api/evaluations.py) listed, followed, canceled and resumed
here too."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request

from forgeflow.api.security import CONTRIBUTOR, READER, audit_target, services
from forgeflow.errors import InvalidInput, NotFound
from forgeflow.names import client_path
from forgeflow.store.states import JobStatus
from forgeflow.training.checkpoints import newest_checkpoint
from forgeflow.training.jobfile import JobRequest, check_method
from forgeflow.training.jobs import RESULT_FILE, Job
from forgeflow.training.tracking import read_metrics

router = APIRouter(tags=["jobs"])


def existing_file(path: str, field: str) -> Path:
    """The absolute path of a file the request names, which must exist (a path no filesystem holds: a 400)."""
    p = client_path(path, field)
    if not p.is_file():
        raise NotFound(f"{field.replace('_', ' ')} file {p} does not exist", field=field)
    return p


def check_data_file(path: str | None, field: str, method: str = "sft") -> str | None:
    """The absolute path of a data file the request names, which must exist and hold valid rows for the method:
    chat rows (sft) or preference rows (dpo)."""
    if path is None:
        return None
    p = existing_file(path, field)
    from forgeflow.data.validate import METHODS, validate_file

    report = validate_file(p, max_problems=3, method=method)
    if report.problems:
        first = "; ".join(str(problem) for problem in report.problems[:3])
        shape = METHODS[method][1]
        hint = f" (see: forgeflow data validate {p})" if method == "sft" else ""
        raise InvalidInput(f"{field.replace('_', ' ')} {p} is not valid {shape} data for method {method}: {first}"
                           f"{hint}", field=field)
    return str(p)


def job_view(job: Job) -> dict:
    """A job as the API shows it: its record (with `evaluation_job`, a fine-tune's evaluation against its base when
    it asked for one), the outputs that exist and the newest checkpoint."""
    out = job.to_dict()
    outputs = {}
    if job.type == "evaluation":
        if job.status == JobStatus.COMPLETED:
            outputs["result"] = str(job.job_dir / RESULT_FILE)  # GET /api/evaluations/{id} answers it
    elif job.status == JobStatus.COMPLETED:
        outputs["mlflow_model"] = str(job.job_dir / "outputs" / "mlflow_model")
        if (job.job_dir / "outputs" / "adapter").is_dir():
            outputs["adapter"] = str(job.job_dir / "outputs" / "adapter")
    out["outputs"] = outputs
    checkpoint = newest_checkpoint(job.job_dir / "checkpoints")
    out["last_checkpoint"] = str(checkpoint) if checkpoint else None
    return out


@router.post("/jobs", status_code=201, dependencies=CONTRIBUTOR)
def create_job(body: JobRequest, request: Request, ff=Depends(services)) -> dict:
    from forgeflow.registry.resolve import resolve_model
    from forgeflow.training.hyperparams import resolve_hyperparameters

    if body.type != "finetuning":
        raise InvalidInput(f"job type {body.type!r} is not supported: use 'finetuning'", field="type")
    hp = check_method(resolve_hyperparameters(body.hyperparameters))
    training = check_data_file(body.training_data, "training_data", hp.method.method)
    validation = check_data_file(body.validation_data, "validation_data", hp.method.method)
    ref, path = resolve_model(body.model)
    job = ff.runner.submit(base_model=ref, base_model_path=str(path), training_data=training,
                           validation_data=validation, hyperparameters=hp, name=body.name, compute=body.compute)
    audit_target(request, job.id)
    return job_view(job)


@router.get("/hyperparameters", dependencies=READER)
def hyperparameters() -> list[dict]:
    """Every fine-tuning setting: name, group, type, default, description, valid values; `common` ones first."""
    from forgeflow.training.hyperparams import describe_hyperparameters

    return describe_hyperparameters()


@router.get("/jobs", dependencies=READER)
def list_jobs(ff=Depends(services)) -> list[dict]:
    return [job_view(job) for job in ff.runner.list()]


@router.get("/jobs/{job_id}", dependencies=READER)
def show_job(job_id: str, ff=Depends(services)) -> dict:
    return job_view(ff.runner.get(job_id))


@router.post("/jobs/{job_id}/cancel", dependencies=CONTRIBUTOR)
def cancel_job(job_id: str, ff=Depends(services)) -> dict:
    return job_view(ff.runner.cancel(job_id))


@router.post("/jobs/{job_id}/resume", dependencies=CONTRIBUTOR)
def resume_job(job_id: str, ff=Depends(services)) -> dict:
    """Queue a Failed or Canceled job again; its worker continues from the newest checkpoint."""
    return job_view(ff.runner.resume(job_id))


@router.get("/jobs/{job_id}/metrics", dependencies=READER)
def job_metrics(job_id: str, offset: int = Query(0, ge=0, le=2**53), ff=Depends(services)) -> list[dict]:
    """Metrics rows from row `offset` on (a follower asks only for rows it has not seen)."""
    return read_metrics(ff.runner.get(job_id).job_dir)[max(0, offset):]


@router.get("/jobs/{job_id}/logs", dependencies=READER)
def job_logs(job_id: str, offset: int = Query(0, ge=0, le=2**53), ff=Depends(services)) -> dict:
    """Log text from byte `offset`; `next_offset` continues where this answer stops."""
    text, next_offset = ff.runner.log_text(job_id, offset)
    return {"text": text, "next_offset": next_offset}
