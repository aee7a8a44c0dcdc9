"""A fine-tune's evaluation against its base (`evaluate_against_base`) gets a column of its own,
`jobs.evaluation_job`, written only by the job runner. Rows from before kept the link in their metrics JSON under
the key `evaluation_job`: it moves to the column and out of the metrics."""

import json

import sqlalchemy as sa
from alembic import op

revision = "0012_job_evaluation"
down_revision = "0011_rollouts"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("evaluation_job", sa.String(32), nullable=True))
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("metrics", sa.Text),
                    sa.column("evaluation_job", sa.String))
    conn = op.get_bind()
    linked = conn.execute(sa.select(jobs.c.id, jobs.c.metrics).where(jobs.c.metrics.like('%"evaluation_job"%')))
    for job_id, text in linked.fetchall():
        try:
            metrics = json.loads(text)
        except ValueError:
            continue
        if not isinstance(metrics, dict) or not isinstance(metrics.get("evaluation_job"), str):
            continue
        evaluation = metrics.pop("evaluation_job")
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
            evaluation_job=evaluation, metrics=json.dumps(metrics) if metrics else None))
