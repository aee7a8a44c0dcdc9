"""Fine-tuning jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from forgeflow.api.deps import ADMIN, services
from forgeflow.errors import InvalidInput
from forgeflow.training.runner import check_data_file, read_metrics

router = APIRouter(dependencies=ADMIN, tags=["jobs"])


class JobCreate(BaseModel):
    """A chat-completion fine-tuning job."""

    type: str = Field("finetuning", description="Job type; only 'finetuning' exists.")
    model: str = Field(description="Base model: catalog name, local folder or registered name:version.")
    training_data: str = Field(description="Path of the training chat JSONL file.")
    validation_data: str | None = Field(None, description="Path of the validation chat JSONL file.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Azure-named settings.")
    name: str | None = Field(None, description="Display name.")
    compute: str = Field("local", description="Compute target.")


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
    out = {k: v for k, v in job.items() if k not in ("pid",)}
    out["outputs"] = {"mlflow_model": str(Path(job["job_dir"]) / "outputs" / "mlflow_model")} if job["status"] == "Completed" else {}
    return out


@router.post("/jobs", status_code=201)
def create_job(body: JobCreate, ff=Depends(services)) -> dict:
    from forgeflow.registry.resolve import resolve_model
    from forgeflow.training.hyperparams import resolve_hyperparameters

    if body.type != "finetuning":
        raise InvalidInput(f"job type {body.type!r} is not supported: use 'finetuning'", field="type")
    if body.compute != "local":
        raise InvalidInput(f"compute target {body.compute!r} does not exist: use 'local'", field="compute")
    hp = resolve_hyperparameters(body.hyperparameters)
    training = check_data_file(body.training_data, "training_data")
    validation = check_data_file(body.validation_data, "validation_data")
    _check_rows(training, "training_data")
    _check_rows(validation, "validation_data")
    ref, path = resolve_model(body.model)
    job = ff.runner.submit({
        "name": body.name, "base_model": ref, "base_model_path": str(path), "training_data": training,
        "validation_data": validation, "hyperparameters": hp.model_dump(mode="json"), "compute": body.compute,
    })
    return job_view(job)


@router.get("/jobs")
def list_jobs(ff=Depends(services)) -> list[dict]:
    return [job_view(j) for j in ff.ws.store.select("jobs", order_by="created_at DESC")]


@router.get("/jobs/{job_id}")
def show_job(job_id: str, ff=Depends(services)) -> dict:
    return job_view(ff.runner.get(job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, ff=Depends(services)) -> dict:
    return job_view(ff.runner.cancel(job_id))


@router.get("/jobs/{job_id}/metrics")
def job_metrics(job_id: str, ff=Depends(services)) -> list[dict]:
    return read_metrics(Path(ff.runner.get(job_id)["job_dir"]))


@router.get("/jobs/{job_id}/logs")
def job_logs(job_id: str, offset: int = 0, ff=Depends(services)) -> dict:
    """Log text from byte `offset`; `next_offset` continues where this answer stops."""
    path = Path(ff.runner.get(job_id)["job_dir"]) / "worker.log"
    if not path.exists():
        return {"text": "", "next_offset": 0}
    with open(path, "rb") as f:
        f.seek(max(0, offset))
        data = f.read(256 * 1024)
    return {"text": data.decode(errors="replace"), "next_offset": max(0, offset) + len(data)}
