"""What the job runner knows of an evaluation job beyond its row: the files its worker leaves in the job folder
(rows.jsonl as it goes, result.json at the end; see jobs.EvaluationSpec) and the evaluation a fine-tune with
`evaluate_against_base` sets off. The runner stays the one writer of the jobs table; these only read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, NotFound
from forgeflow.store.states import JobStatus
from forgeflow.training.jobs import RESULT_FILE, ROWS_FILE, EvaluatedModel, Job


def rows_done(job_dir: Path) -> int:
    """How many rows an evaluation job has scored, each model's apart (what its resume skips)."""
    try:
        with open(Path(job_dir) / ROWS_FILE, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def read_result(job: Job) -> dict[str, Any]:
    """The result.json of a Completed evaluation job; a Conflict naming its status (and rows done) before then."""
    if job.type != "evaluation":
        raise NotFound(f"job {job.id} is a {job.type} job, not an evaluation (see: forgeflow job list)", field="job")
    if job.status != JobStatus.COMPLETED:
        p = job.progress or {}
        done = f" ({p.get('step') or 0} of {p['max_steps']} rows scored)" if p.get("max_steps") else ""
        hint = (f"continue it with: forgeflow job resume {job.id}" if job.status.terminal
                else f"follow it with: forgeflow job stream {job.id}")
        raise Conflict(f"evaluation {job.id} is {job.status}{done}: its result is there once it is Completed; "
                       f"{hint}", field="job")
    path = job.job_dir / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NotFound(f"evaluation {job.id} completed but its result {path} cannot be read ({exc})",
                       field="job") from None


def against_base(job: Job) -> dict[str, Any]:
    """The evaluation a completed fine-tune queues: its output model (`job:ID`) against its base model, on its
    validation data, on the same compute target."""
    from forgeflow.inference.model_folder import hf_model_dir

    return {"model": EvaluatedModel(f"job:{job.id}", str(hf_model_dir(job.output_model()))),
            "baseline": EvaluatedModel(job.base_model, job.base_model_path), "data": job.validation_data,
            "name": f"{job.name}-vs-base", "compute": job.compute, "source_job": job.id}
