"""The evaluation worker: one process per evaluation job, `python -m forgeflow.evaluation.worker JOB_DIR`.

Reads JOB_DIR/evaluation.json (`training.jobs.EvaluationSpec`, written by the job runner) and scores the model,
then the baseline, on the same rows of a chat file: the loss of each reference answer, greedy answers scored
against it (exact match, token F1, ROUGE-L) and by a judge flow (judge.py). Each finished row is appended to
JOB_DIR/rows.jsonl, so a resumed job (`"resume": true`) skips the rows already done (those the data file still holds
at the same place; a line torn by a kill is cut off first); at the end JOB_DIR/result.json
holds per-row and aggregate metrics with confidence intervals and the paired comparison (report.py). Progress goes
to JOB_DIR/status.json as a training worker's does (step = rows done of both sides), an MLflow run in experiment
"forgeflow-evaluation" gets the aggregates (`model.<metric>`, `baseline.<metric>`) and result.json, and a
registered model version gets the summary in its TAG_EVALUATION tag (a failure there is a warning in the log and in
result.json, the job stays Completed). A prompt cut to fit the model's context is marked on its row and counted
(`truncated_prompts`). SIGTERM stops at the next batch of rows: status Canceled, exit 0. Any error (a bad data row, a
model that does not load, max_new_tokens past the model's context): status Failed, exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from forgeflow.evaluation.metrics import GENERATION_METRICS, generation_scores
from forgeflow.evaluation.report import build_result, registry_summary
from forgeflow.evaluation.scoring import Row, Scorer, read_rows
from forgeflow.store.states import JobStatus
from forgeflow.training.jobs import RESULT_FILE, ROWS_FILE, EvaluationSpec, write_json
from forgeflow.training.tracking import Attempt, JobFiles, MlflowRun, create_experiment
from forgeflow.training.worker import RunSlot, one_line_error, run_worker

MLFLOW_EXPERIMENT = "forgeflow-evaluation"


def run_job(job_dir: Path) -> int:
    """Run the evaluation in JOB_DIR to its end; returns the exit code (0 done, canceled or superseded, 1 failed)."""

    def work(files: JobFiles, attempt: Attempt, previous: dict[str, Any], slot: RunSlot):
        spec = EvaluationSpec.read(files.job_dir)
        if spec.resume and previous.get("mlflow_run_id"):
            slot.run = MlflowRun.reopen(spec, previous["mlflow_run_id"])  # type: ignore[arg-type]
        if slot.run is None:
            slot.run = start_run(spec)
        files.write_status(mlflow_run_id=slot.run.run_id)
        rows = read_rows(Path(spec.data), spec.max_rows)
        status = evaluate(spec, files, rows, attempt)
        if status == JobStatus.COMPLETED and not attempt.superseded:
            finish(spec, slot.run, build_result(spec, rows, read_done(files.job_dir, rows)), files)
        return status, None

    return run_worker(job_dir, work)


def start_run(spec: EvaluationSpec) -> MlflowRun:
    """A new MLflow run for the job in the evaluation experiment, its settings logged as params."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from forgeflow.store.config import worker_uri

    client = MlflowClient(tracking_uri=worker_uri(spec.mlflow_tracking_uri, os.environ))
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = create_experiment(client, MLFLOW_EXPERIMENT, _artifact_location(spec))
    name = spec.name or spec.job_id or "evaluation"
    tags = {"forgeflow.job_id": spec.job_id, "forgeflow.model": spec.model.ref, "mlflow.runName": name}
    if spec.baseline is not None:
        tags["forgeflow.baseline"] = spec.baseline.ref
    created = client.create_run(experiment_id, tags=tags, run_name=name)
    params = {"model": spec.model.ref, "baseline": spec.baseline.ref if spec.baseline else "", "data": spec.data,
              "metrics": ",".join(spec.metrics), "max_new_tokens": spec.max_new_tokens,
              "max_rows": spec.max_rows or "", "seed": spec.seed, "confidence": spec.confidence,
              "judge_flow": spec.judge_flow or "", "judge_connection": spec.judge_connection or ""}
    client.log_batch(created.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return MlflowRun(client, created.info.run_id)


def _artifact_location(spec: EvaluationSpec) -> str | None:
    """Where a new evaluation experiment keeps its artifacts: the job file's (the runner's workspace's), else, for a
    job file written without one, this process's workspace's."""
    location = spec.mlflow_artifact_location
    if location is None:
        from forgeflow.store.home import Paths

        location = Paths.current().mlflow_artifacts
    return str(Path(location).resolve()) if location and "://" not in location else location


def sides(spec: EvaluationSpec) -> list[tuple[str, Any]]:
    return [("model", spec.model)] + ([("baseline", spec.baseline)] if spec.baseline is not None else [])


def read_done(job_dir: Path, rows: list[Row]) -> dict[tuple[str, int], dict[str, Any]]:
    """The rows finished so far, by (side, row index): only those whose line and messages are still the data
    file's row at that index (the file may have changed since); a line still being written is skipped."""
    done: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        lines = (Path(job_dir) / ROWS_FILE).read_text().splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            entry = json.loads(line)
            key = (entry["side"], int(entry["index"]))
        except (ValueError, KeyError, TypeError):
            continue
        if 0 <= key[1] < len(rows) and entry.get("line") == rows[key[1]].line \
                and entry.get("digest") == rows[key[1]].digest:
            done[key] = entry
        else:
            done.pop(key, None)
    return done


def cut_torn_tail(path: Path) -> None:
    """Drop what follows the last newline of rows.jsonl: a row a kill left half written, which the next row
    appended would otherwise run into."""
    try:
        with open(path, "rb+") as fh:
            data = fh.read()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                fh.truncate(keep)
    except FileNotFoundError:
        return


def evaluate(spec: EvaluationSpec, files: JobFiles, rows: list[Row], cancel: Attempt) -> JobStatus:
    """Score every row not yet in rows.jsonl on each side; Canceled when asked to stop between batches."""
    rows_path = files.job_dir / ROWS_FILE
    if not spec.resume:
        rows_path.unlink(missing_ok=True)
    cut_torn_tail(rows_path)
    done = read_done(files.job_dir, rows)
    total = len(rows) * len(sides(spec))
    finished = len(done)
    files.write_status(JobStatus.RUNNING, step=finished, max_steps=total)
    print(f"evaluating {len(rows)} rows of {spec.data} on {', '.join(s.ref for _, s in sides(spec))} "
          f"({', '.join(spec.metrics)}); {finished} of {total} already done", flush=True)
    judge = _judge(spec) if "judge" in spec.metrics else None
    generates = any(m in spec.metrics for m in (*GENERATION_METRICS, "judge"))
    started, counted = time.monotonic(), 0
    for side, model in sides(spec):
        todo = [i for i in range(len(rows)) if (side, i) not in done]
        if not todo:
            continue
        if cancel.is_set():
            return JobStatus.CANCELED
        print(f"loading {model.ref} ({side})", flush=True)
        scorer = _load(model)
        try:
            if generates:
                scorer.check_generation(spec.max_new_tokens, model.ref)
            for at in range(0, len(todo), spec.batch_size):
                if cancel.is_set():
                    return JobStatus.CANCELED
                batch = [rows[i] for i in todo[at: at + spec.batch_size]]
                entries = score_batch(spec, scorer, batch, judge)
                with rows_path.open("a") as fh:
                    for i, entry in zip(todo[at: at + spec.batch_size], entries):
                        fh.write(json.dumps({"side": side, "index": i, **entry}) + "\n")
                cut = [e["line"] for e in entries if e.get("prompt_truncated")]
                if cut:
                    print(f"warning: {model.ref}: the prompt of line {', '.join(map(str, cut))} is longer than the "
                          "model's context and lost its start", flush=True)
                finished += len(batch)
                counted += len(batch)
                eta = (time.monotonic() - started) / counted * (total - finished)
                files.write_status(JobStatus.RUNNING, step=finished, max_steps=total, eta_s=round(eta, 1))
                print(f"rows {finished}/{total}", flush=True)
        finally:
            scorer.close()
    return JobStatus.COMPLETED


def _load(model: Any) -> Scorer:
    from forgeflow.errors import ForgeflowError, InvalidInput

    try:
        return Scorer(model.path)
    except ForgeflowError as exc:
        raise type(exc)(f"model {model.ref}: {exc.message}", field="model") from exc
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"model {model.ref} does not load from {model.path}: {one_line_error(exc)}; check that "
                           "the folder holds a complete Hugging Face checkpoint", field="model") from exc


def _judge(spec: EvaluationSpec) -> Any:
    """The judge for this job: its flow checked (and the connection looked up) before any row is scored."""
    from forgeflow.evaluation.judge import DEFAULT_JUDGE_FLOW, judge_answers, judge_flow
    from forgeflow.store.connections import local_connection_lookup

    flow_dir = Path(spec.judge_flow) if spec.judge_flow else DEFAULT_JUDGE_FLOW
    judge_flow(flow_dir, spec.judge_connection)
    provider = local_connection_lookup()

    def judge(items: list[dict]) -> list[float | None]:
        return judge_answers(flow_dir, items, connection=spec.judge_connection, connection_provider=provider)

    return judge


def score_batch(spec: EvaluationSpec, scorer: Scorer, batch: list[Row], judge: Any) -> list[dict[str, Any]]:
    """Each row's answer and metrics on one side (what rows.jsonl keeps of it, with the row's line and digest)."""
    entries: list[dict[str, Any]] = [{"line": row.line, "digest": row.digest} for row in batch]
    if "loss" in spec.metrics:
        for entry, loss in zip(entries, scorer.losses(batch)):
            entry.update(loss=loss.loss, loss_tokens=loss.tokens)
            if loss.prompt_truncated:
                entry["prompt_truncated"] = True
    if any(m in spec.metrics for m in (*GENERATION_METRICS, "judge")):
        answers = scorer.generate(batch, spec.max_new_tokens)
        for entry, row, answer in zip(entries, batch, answers):
            entry.update(answer=answer.text, **generation_scores(answer.text, row.reference, spec.metrics))
            if answer.prompt_truncated:
                entry["prompt_truncated"] = True
        if judge is not None:
            items = [{"question": r.question, "answer": a.text, "reference": r.reference}
                     for r, a in zip(batch, answers)]
            for entry, score in zip(entries, judge(items)):
                entry["judge"] = score
    return entries


def finish(spec: EvaluationSpec, run: MlflowRun, result: dict[str, Any], files: JobFiles) -> None:
    """The summary onto a registered version, then result.json (with a warning when the version's tag could not
    be written: the scores stand), the aggregates to MLflow with result.json as an artifact, and to status.json."""
    if _is_registered_version(spec.model.ref):
        from forgeflow.registry.evaluations import record_evaluation
        from forgeflow.store.config import worker_uri

        summary = registry_summary(result, finished_at=files.state["updated_at"], mlflow_run_id=run.run_id)
        try:
            record_evaluation(spec.model.ref, summary, mlflow_uri=worker_uri(spec.mlflow_tracking_uri, os.environ))
            print(f"recorded the evaluation on {spec.model.ref}", flush=True)
        except Exception as exc:  # the registry's failure is not the evaluation's
            warning = (f"the evaluation could not be recorded on {spec.model.ref} ({one_line_error(exc)}); its "
                       f"result is in this job and MLflow run {run.run_id}")
            print(f"warning: {warning}", flush=True)
            result["warnings"] = [*result.get("warnings", []), warning]
    write_json(files.job_dir / RESULT_FILE, result)
    values: dict[str, float] = {}
    for side in ("model", "baseline"):
        for name, value in ((result.get(side) or {}).get("metrics") or {}).items():
            if isinstance(value, (int, float)):
                values[f"{side}.{name}"] = value
    run.log_metrics(values, step=0)
    run.client.log_artifact(run.run_id, str(files.job_dir / RESULT_FILE))
    files.write_status(metrics=values)


def _is_registered_version(ref: str) -> bool:
    """`name:version` (a registered model version), not a folder or a base model's catalog name."""
    name, _, version = ref.rpartition(":")
    return bool(name) and version.isdigit() and not Path(ref).exists()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m forgeflow.evaluation.worker JOB_DIR", file=sys.stderr)
        return 2
    return run_job(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
