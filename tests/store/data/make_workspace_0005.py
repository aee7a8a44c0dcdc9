"""How workspace-0005.sql was made: run with forgeflow as it was before the store moved to Alembic (its own
`schema_migrations` table, migrations 0001..0005), e.g. `git checkout 8d1d929 && python THIS_FILE OUT_DIR`.

It opens a fresh workspace with that code's own classes and leaves one row of every kind in it (a job, an endpoint
with a deployment, a connection with a secret, a compute target, a setting, a Studio session), then dumps the SQLite database as SQL
and copies the workspace key that encrypted the secrets. The upgrade test (test_upgrade.py) loads the dump into a
new home and opens it with today's code.
"""

import os
import shutil
import sqlite3
import sys
from pathlib import Path

out = Path(sys.argv[1]).resolve()
home = out / "home"
os.environ["FORGEFLOW_HOME"] = str(home)

from forgeflow.store.connections import ConnectionStore  # noqa: E402
from forgeflow.store.db import now  # noqa: E402
from forgeflow.store.workspace import Workspace  # noqa: E402
from forgeflow.training.compute.targets import ComputeTargets, validate_target  # noqa: E402

ws = Workspace.open()
store = ws.store
ws.store.set_setting("upgrade_probe", "kept")
ConnectionStore(ws).upsert("legacy-conn", "custom", {"endpoint": "http://127.0.0.1:9/score"}, {"key": "legacy-secret"})
ComputeTargets(store).create(validate_target({"name": "legacy-ray", "type": "ray", "address": "127.0.0.1:6379",
                                             "max_concurrent_jobs": 2, "storage": "/srv/forgeflow-shared"}))
store.insert("jobs", {
    "id": "ftjob-legacy0001", "name": "legacy-job", "type": "finetuning", "status": "Completed", "compute": "local",
    "base_model": "smollm2-135m-instruct", "base_model_path": "/models/smollm2", "training_data": "/data/train.jsonl",
    "validation_data": None, "hyperparameters": {"learning_rate": 0.0002, "lora_r": 8, "max_steps": 3},
    "job_dir": "/jobs/ftjob-legacy0001", "mlflow_run_id": "0123456789abcdef", "progress": {"step": 3, "max_steps": 3},
    "metrics": {"train_loss": 1.25}, "created_at": now(), "started_at": now(), "finished_at": now()})
store.insert("endpoints", {
    "name": "legacy-ep", "auth_mode": "key", "primary_key": ws.secrets.encrypt("legacy-primary-key"),
    "secondary_key": ws.secrets.encrypt("legacy-secondary-key"), "traffic": {"blue": 100},
    "mirror_traffic": {}, "max_body_bytes": 65536, "description": "made before Alembic", "created_at": now()})
store.insert("deployments", {
    "endpoint": "legacy-ep", "name": "blue", "model_ref": "legacy-model:1", "model_path": "/models/legacy-model",
    "runtime": "transformers", "instance_count": 1, "request_settings": {"request_timeout_ms": 90000},
    "state": "Succeeded", "created_at": now(), "updated_at": now(), "compute": "local",
    "resources": {"cpus": 1}, "scale_settings": {"type": "default"}})
ws.sessions.start(ws.admin_token())

with sqlite3.connect(ws.paths.db) as db, open(out / "workspace-0005.sql", "w") as f:
    for line in db.iterdump():
        f.write(line + "\n")
shutil.copy(ws.paths.secret_key, out / "workspace-0005.key")
