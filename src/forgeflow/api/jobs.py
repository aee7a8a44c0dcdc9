"""Fine-tuning jobs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Query

from forgeflow.api.security import ADMIN, services
from forgeflow.errors import InvalidInput
from forgeflow.training.checkpoints import newest_checkpoint
from forgeflow.training.jobfile import JobRequest
from forgeflow.training.runner import check_data_file, read_metrics

router = APIRouter(dependencies=ADMIN, tags=["jobs"])


def _check_rows(path: str | None, field: str) -> None:
    if path is None:
        return
    from forgeflow.data.validate import validate_file

    report = validate_file(Path(path), max_problems=3)
    if report.problems:
        first = "; ".join(str(p) for p in report.problems[:3])
        raise InvalidInput(f"{field.replace('_', ' ')} {path} is not valid chat data: {first} "
                           f"(see: forgeflow data validate {path})", field=field)


def job_view(job: dict) -> dict:
    """A job row as the API shows it: outputs that exist, the newest checkpoint, no pid."""
    out = {k: v for k, v in job.items() if k not in ("pid",)}
    job_dir = Path(job["job_dir"])
    outputs = {}
    if job["status"] == "Completed":
        outputs["mlflow_model"] = str(job_dir / "outputs" / "mlflow_model")
        if (job_dir / "outputs" / "adapter").is_dir():
            outputs["adapter"] = str(job_dir / "outputs" / "adapter")
    out["outputs"] = outputs
    checkpoint = newest_checkpoint(job_dir / "checkpoints")
    out["last_checkpoint"] = str(checkpoint) if checkpoint else None
    return out


@router.post("/jobs", status_code=201)
def create_job(body: JobRequest, ff=Depends(services)) -> dict:
    from forgeflow.registry.resolve import resolve_model
    from forgeflow.training.hyperparams import resolve_hyperparameters

    if body.type != "finetuning":
        raise InvalidInput(f"job type {body.type!r} is not supported: use 'finetuning'", field="type")
    compute = ff.runner.compute.get(body.compute)["name"]
    hp = resolve_hyperparameters(body.hyperparameters)
    training = check_data_file(body.training_data, "training_data")
    validation = check_data_file(body.validation_data, "validation_data")
    _check_rows(training, "training_data")
    _check_rows(validation, "validation_data")
    ref, path = resolve_model(body.model)
    job = ff.runner.submit({
        "name": body.name, "base_model": ref, "base_model_path": str(path), "training_data": training,
        "validation_data": validation, "hyperparameters": hp.model_dump(mode="json"), "compute": compute,
    })
    return job_view(job)


@router.get("/hyperparameters")
def hyperparameters() -> list[dict]:
    """Every fine-tuning setting: name, type, default, description, valid values; `common` ones first."""
    from forgeflow.training.hyperparams import describe_hyperparameters

    return describe_hyperparameters()


@router.get("/jobs")
def list_jobs(ff=Depends(services)) -> list[dict]:
    return [job_view(j) for j in ff.ws.store.select("jobs", order_by="created_at DESC")]


@router.get("/jobs/{job_id}")
def show_job(job_id: str, ff=Depends(services)) -> dict:
    return job_view(ff.runner.get(job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, ff=Depends(services)) -> dict:
    return job_view(ff.runner.cancel(job_id))


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: str, ff=Depends(services)) -> dict:
    """Queue a Failed or Canceled job again; its worker continues from the newest checkpoint."""
    return job_view(ff.runner.resume(job_id))


@router.get("/jobs/{job_id}/metrics")
def job_metrics(job_id: str, offset: int = Query(0, ge=0, le=2**53), ff=Depends(services)) -> list[dict]:
    """Metrics rows from row `offset` on (a follower asks only for rows it has not seen)."""
    return read_metrics(Path(ff.runner.get(job_id)["job_dir"]))[max(0, offset):]


@router.get("/jobs/{job_id}/logs")
def job_logs(job_id: str, offset: int = Query(0, ge=0, le=2**53), ff=Depends(services)) -> dict:
    """Log text from byte `offset`; `next_offset` continues where this answer stops."""
    path = Path(ff.runner.get(job_id)["job_dir"]) / "worker.log"
    if not path.exists():
        return {"text": "", "next_offset": 0}
    with open(path, "rb") as f:
        f.seek(max(0, offset))
        data = f.read(256 * 1024)
    return {"text": data.decode(errors="replace"), "next_offset": max(0, offset) + len(data)}
