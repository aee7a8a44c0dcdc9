"""Revision 0012 (job_evaluation) upgrades a store at 0011 in place: jobs get the evaluation_job column, and a
fine-tune whose metrics kept the link to its evaluation (how the link was stored before) has it moved there."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import command

from forgeflow.store import migrate
from forgeflow.store.db import Store
from forgeflow.training.jobs import Job


def _job(job_id: str, metrics: str | None) -> dict:
    return {"id": job_id, "name": job_id, "type": "finetuning", "status": "Completed", "compute": "local",
            "base_model": "tiny", "base_model_path": "/m", "training_data": "/t.jsonl", "hyperparameters": "{}",
            "job_dir": f"/jobs/{job_id}", "created_at": "2026-01-01T00:00:00Z", "metrics": metrics}


def test_a_store_at_0011_gets_the_evaluation_job_column(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    config = migrate._config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0011_rollouts")
        jobs = sa.table("jobs", *(sa.column(k) for k in _job("x", None)))
        conn.execute(sa.insert(jobs), [
            _job("ft-linked", json.dumps({"train_loss": 0.5, "evaluation_job": "ev-1"})),
            _job("ft-only-link", json.dumps({"evaluation_job": "ev-2"})),
            _job("ft-plain", json.dumps({"train_loss": 0.7})),
            _job("ft-none", None),
        ])
    assert migrate.upgrade(engine)[0] == "0012_job_evaluation"  # and any later revisions
    engine.dispose()

    store = Store(url)
    jobs = {row["id"]: Job.from_row(row) for row in store.select("jobs")}
    assert (jobs["ft-linked"].evaluation_job, jobs["ft-linked"].metrics) == ("ev-1", {"train_loss": 0.5})
    assert (jobs["ft-only-link"].evaluation_job, jobs["ft-only-link"].metrics) == ("ev-2", None)
    assert (jobs["ft-plain"].evaluation_job, jobs["ft-plain"].metrics) == (None, {"train_loss": 0.7})
    assert (jobs["ft-none"].evaluation_job, jobs["ft-none"].metrics) == (None, None)
    store.update("jobs", {"id": "ft-plain"}, {"evaluation_job": "ev-3"})
    assert store.get("jobs", id="ft-plain")["evaluation_job"] == "ev-3"
