"""The records of a job: `Job`, a row of the jobs table as the job runner (its one writer) hands it out; `JobSpec`,
the fine-tuning job file JOB_DIR/spec.json the runner writes and the training worker reads; `EvaluationSpec`, an
evaluation job's JOB_DIR/evaluation.json, read by the evaluation worker."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.store.states import JobStatus
from forgeflow.training.hyperparams import Hyperparameters, resolve_hyperparameters

SPEC_FILE = "spec.json"
MLFLOW_EXPERIMENT = "forgeflow-finetuning"


@dataclass(frozen=True)
class Job:
    """One fine-tuning job. `hyperparameters` are the validated settings under Azure's flat names."""

    id: str
    name: str
    type: str
    status: JobStatus
    compute: str
    base_model: str
    base_model_path: str
    training_data: str
    validation_data: str | None
    hyperparameters: dict[str, Any]
    job_dir: Path
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    mlflow_run_id: str | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    evaluation_job: str | None = None  # a fine-tune with evaluate_against_base: its evaluation against its base

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        # The old pid column stays behind: a compute keeps its worker reference in the job folder.
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        return cls(**values | {"status": JobStatus(row["status"]), "job_dir": Path(row["job_dir"])})

    @property
    def active(self) -> bool:
        """Its worker was started and has not ended: it holds one of its compute target's places."""
        return self.status != JobStatus.QUEUED and not self.status.terminal

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"status": str(self.status), "job_dir": str(self.job_dir)}

    def output_model(self) -> Path:
        """The MLflow model the completed job wrote; clear errors otherwise."""
        if self.status != JobStatus.COMPLETED:
            raise Conflict(f"job {self.id} is {self.status}, not Completed: it has no model to register",
                           field="from_job")
        out = self.job_dir / "outputs" / "mlflow_model"
        if not (out / "MLmodel").exists():
            raise NotFound(f"job {self.id} completed but its output {out} is missing", field="from_job")
        return out


@dataclass(frozen=True)
class JobSpec:
    """What the worker trains, as JOB_DIR/spec.json holds it; `resume` continues from the newest checkpoint."""

    job_id: str
    name: str
    base_model: str
    base_model_path: str
    training_data: str
    validation_data: str | None
    hyperparameters: Hyperparameters
    mlflow_tracking_uri: str
    mlflow_experiment: str = MLFLOW_EXPERIMENT
    mlflow_artifact_location: str | None = None
    compute: str = "local"
    resume: bool = False

    def write(self, job_dir: Path) -> None:
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        write_json(Path(job_dir) / SPEC_FILE, doc | {"hyperparameters": self.hyperparameters.to_dict()})

    @classmethod
    def read(cls, job_dir: Path) -> JobSpec:
        """Read the job file; its hyperparameters are parsed back into the validated object, naming a bad field."""
        path = Path(job_dir) / SPEC_FILE
        doc = read_job_file(path)
        missing = [key for key in ("base_model_path", "training_data", "mlflow_tracking_uri") if not doc.get(key)]
        if missing:
            raise InvalidInput(f"{path} lacks {', '.join(missing)}", field=missing[0])
        return cls(
            job_id=str(doc.get("job_id") or ""), name=str(doc.get("name") or ""),
            base_model=doc.get("base_model") or doc["base_model_path"], base_model_path=doc["base_model_path"],
            training_data=doc["training_data"], validation_data=doc.get("validation_data"),
            hyperparameters=resolve_hyperparameters(doc.get("hyperparameters") or {}),
            mlflow_tracking_uri=doc["mlflow_tracking_uri"],
            mlflow_experiment=doc.get("mlflow_experiment") or MLFLOW_EXPERIMENT,
            mlflow_artifact_location=doc.get("mlflow_artifact_location"), compute=doc.get("compute") or "local",
            resume=bool(doc.get("resume")),
        )


def read_job_file(path: Path) -> dict[str, Any]:
    """A job file the runner wrote (spec.json, evaluation.json) as JSON; clear errors when it is missing or broken."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{path} is missing; the job runner writes it before starting the worker") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from None


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a JSON file atomically (a worker or the runner may read it at any moment)."""
    tmp = path.with_name(f".{path.name}.runner.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


# -- evaluation jobs -----------------------------------------------------------------------------------------------
# A job's `type` says which program its worker runs (started by module name, never imported from here).
JOB_PROGRAMS = {"finetuning": "forgeflow.training.worker", "evaluation": "forgeflow.evaluation.worker"}
EVALUATION_FILE = "evaluation.json"
ROWS_FILE = "rows.jsonl"  # an evaluation's finished rows, one JSON object a line, appended as it goes
RESULT_FILE = "result.json"  # a completed evaluation's result (EvaluationSpec's docstring has its shape)
EVALUATION_METRICS = ("loss", "exact_match", "f1", "rouge_l", "judge")
DEFAULT_EVALUATION_METRICS = ("loss", "exact_match", "f1", "rouge_l")


@dataclass(frozen=True)
class EvaluatedModel:
    """One side of an evaluation: what the user named (canonical: `name:version`, a base model's catalog name or a
    folder) and the Hugging Face folder it loads from (with `adapter/` when it is a LoRA fine-tune)."""

    ref: str
    path: str


@dataclass(frozen=True)
class EvaluationSpec:
    """What an evaluation job computes, as JOB_DIR/evaluation.json holds it (the runner writes it, the evaluation
    worker reads it; validated at the edge that made it).

    The worker writes status.json like a training worker (status, step = rows done of max_steps = rows), each finished
    row to rows.jsonl (so `resume` skips them), and result.json at the end, which is what `model evaluate --json`
    prints: {"job", "data", "model": {"ref", "metrics": {"f1": 0.71, "f1_ci": [lo, hi], ..., "rows", "truncated_prompts"}},
    "baseline": {...} or null, "comparison": {metric: {"delta", "delta_ci", "better", "worse", "same"}}, "rows":
    [{"line", "question", "reference", "model": {"answer", metric: value..., "prompt_truncated" (only when the prompt
    lost its start to fit the model's context)}, "baseline": {...}, "change": "better" | "worse" | "same"}],
    "warnings": [...] (only when something after the scoring failed, e.g. the registered version's tag)}."""

    job_id: str
    name: str
    model: EvaluatedModel
    baseline: EvaluatedModel | None
    data: str
    mlflow_tracking_uri: str
    mlflow_artifact_location: str | None = None
    metrics: tuple[str, ...] = DEFAULT_EVALUATION_METRICS
    judge_flow: str | None = None
    judge_connection: str | None = None
    max_new_tokens: int = 128
    max_rows: int | None = None
    batch_size: int = 8
    seed: int = 0
    confidence: float = 0.95
    source_job: str | None = None
    compute: str = "local"
    resume: bool = False

    def write(self, job_dir: Path) -> None:
        write_json(Path(job_dir) / EVALUATION_FILE, dataclasses.asdict(self) | {"metrics": list(self.metrics)})

    @classmethod
    def read(cls, job_dir: Path) -> EvaluationSpec:
        path = Path(job_dir) / EVALUATION_FILE
        doc = read_job_file(path)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise InvalidInput(f"{path}: unknown field {unknown[0]!r}", field=unknown[0])
        for side in ("model", "baseline"):
            if isinstance(doc.get(side), dict):
                doc[side] = EvaluatedModel(**doc[side])
        doc["metrics"] = tuple(doc.get("metrics") or DEFAULT_EVALUATION_METRICS)
        return cls(**doc)
