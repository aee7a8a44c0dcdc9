"""`forgeflow init --database-url / --mlflow-uri / --artifacts-root / --mlflow-artifacts`: the choices are validated,
kept in HOME/workspace.json (mode 600, passwords encrypted), shown masked, overridden by FORGEFLOW_DATABASE_URL;
MLflow on the store's Postgres lives in its own schema; a worker's job file never holds a password."""

from __future__ import annotations

import json
import os
import stat

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from forgeflow.cli.main import app
from forgeflow.store import config
from forgeflow.store.home import Paths
from forgeflow.store.workspace import Workspace

runner = CliRunner()
PASSWORD = "s3cr3t-pw"


def init(*args: str, ok: bool = True, stdin: str | None = None) -> dict | str:
    result = runner.invoke(app, ["init", *args, "--json"], input=stdin)
    if ok:
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@")  # the test cluster trusts loopback: any password passes


@pytest.mark.postgres
def test_init_on_postgres_keeps_the_password_encrypted_and_shows_it_masked(postgres, monkeypatch, forgeflow_home):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    url = with_password(postgres.new_database())
    info = init("--database-url", url)
    assert info["created"] is True
    assert info["database_url"] == url.replace(PASSWORD, "***")
    assert PASSWORD not in json.dumps(info) and "search_path%3Dmlflow" in info["mlflow_tracking_uri"]
    saved = forgeflow_home / config.CONFIG_FILE
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600 and PASSWORD not in saved.read_text()
    assert Paths.current().db_url == url  # decrypted in memory only
    again = init()
    assert again["created"] is False and again["database_url"] == info["database_url"]
    from fastapi.testclient import TestClient

    from forgeflow.api.app import create_app

    ws = Workspace.open()
    with TestClient(create_app(ws, background=False)) as http:
        health = http.get("/api/health").json()
        shown = http.get("/api/workspace", headers={"Authorization": f"Bearer {ws.admin_token()}"}).json()
        anonymous = http.get("/api/workspace").status_code
    assert "database_url" not in health and anonymous == 401  # the public health check names no database
    assert shown["database_url"] == info["database_url"] and PASSWORD not in json.dumps(shown)
    assert shown["mlflow_tracking_uri"] == info["mlflow_tracking_uri"]
    # MLflow's tables (its own `jobs`, `endpoints`, ...) live in the `mlflow` schema, forgeflow's in public
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=Paths.current().mlflow_uri).search_experiments(max_results=1)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT table_schema, table_name FROM information_schema.tables WHERE "
                                    "table_name IN ('jobs', 'alembic_version', 'forgeflow_alembic_version')")).all()
    engine.dispose()
    assert sorted(rows) == [("mlflow", "alembic_version"), ("mlflow", "jobs"), ("public", "forgeflow_alembic_version"),
                            ("public", "jobs")]


@pytest.mark.postgres
def test_a_password_can_come_from_stdin_and_the_environment_overrides_the_file(postgres, monkeypatch):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    first, second = postgres.new_database(), postgres.new_database()
    info = init("--database-url", "-", stdin=with_password(first) + "\n")
    assert info["database_url"] == first.replace("postgres@", "postgres:***@")
    monkeypatch.setenv(config.DATABASE_URL_ENV, second)
    assert Paths.current().db_url == second and init()["database_url"] == second
    engine = sa.create_engine(second)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM settings WHERE key = 'admin_token'")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize(("args", "says"), [
    (["--database-url", "mysql://u@h/db"], "database_url: unknown scheme 'mysql'"),
    (["--database-url", "postgresql+psycopg://u:pw@/db"],
     "database_url: 'postgresql+psycopg://u:***@/db' names no host"),
    (["--database-url", "sqlite:///relative.db"],
     "database_url: 'sqlite:///relative.db' names no file by its absolute path"),
    (["--mlflow-uri", "ftp://h/x"], "mlflow_uri: 'ftp://h/x' is neither an MLflow server"),
    (["--artifacts-root", "relative/dir"], "artifacts_root: 'relative/dir' is relative"),
    (["--artifacts-root", "s3://bucket/x"], "artifacts_root: 's3://bucket/x' is not a directory"),
    (["--mlflow-artifacts", "ftp://h/x"], "mlflow_artifacts: ftp:// is not supported"),
])
def test_a_bad_choice_is_one_line_naming_the_field(args, says, monkeypatch):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    assert says in init(*args, ok=False)


def test_an_unreachable_database_is_one_line_naming_database_url_and_no_password(monkeypatch, tmp_path):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    init("--artifacts-root", str(tmp_path / "artifacts"))
    saved = Paths.current().config_file.read_text()
    out = init("--database-url", f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/db", ok=False)
    assert "database_url: the store at postgresql+psycopg://u:***@127.0.0.1:1/db cannot be reached" in out
    assert PASSWORD not in out
    assert Paths.current().config_file.read_text() == saved  # nothing saved: the workspace keeps its store
    # the server's start meets the same line (FORGEFLOW_DATABASE_URL, as a service manager would set it)
    monkeypatch.setenv(config.DATABASE_URL_ENV, f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/db")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1 and "database_url" in result.stderr and PASSWORD not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_object_store_for_mlflow_needs_its_library(monkeypatch):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    if config._installed("boto3"):
        assert init("--mlflow-artifacts", "s3://bucket/mlruns")["mlflow_artifacts"] == "s3://bucket/mlruns"
    else:
        assert "mlflow_artifacts: MLflow reaches s3:// through boto3, which is not installed" in init(
            "--mlflow-artifacts", "s3://bucket/mlruns", ok=False)


def test_the_artifacts_root_holds_datasets_jobs_models_flows_and_mlflow_files(tmp_path, monkeypatch, database_url):
    shared = tmp_path / "nfs"
    info = init("--artifacts-root", str(shared))
    assert info["artifacts_root"] == str(shared) and info["mlflow_artifacts"] == str(shared / "mlruns")
    paths = Paths.current()
    for folder in (paths.datasets, paths.jobs, paths.base_models, paths.flows, paths.mlruns):
        assert folder.parent == shared or folder.parent.parent == shared
    assert paths.db_url == database_url  # the store stays where it was


def test_a_job_file_names_mlflow_without_its_password(tmp_path, monkeypatch):
    """The runner writes the public URI into spec.json and hands the password to the worker's environment."""
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    ws = Workspace(Paths.current())
    ws.configure(mlflow_uri=f"postgresql+psycopg://ml:{PASSWORD}@db.example:5432/mlflow",
                 mlflow_artifacts=str(tmp_path / "runs"))
    from forgeflow.training.hyperparams import resolve_hyperparameters
    from forgeflow.training.runner import JobRunner

    ws.ensure()
    job = JobRunner(ws.store, ws.paths).submit(base_model="tiny", base_model_path="/m", training_data="/t.jsonl",
                                               hyperparameters=resolve_hyperparameters({}))
    spec = (job.job_dir / "spec.json").read_text()
    assert PASSWORD not in spec
    doc = json.loads(spec)
    assert doc["mlflow_tracking_uri"] == "postgresql+psycopg://ml@db.example:5432/mlflow"
    assert doc["mlflow_artifact_location"] == str(tmp_path / "runs")
    assert config.password_env(ws.paths.mlflow_uri) == (doc["mlflow_tracking_uri"], {"PGPASSWORD": PASSWORD})
    assert config.password_env("https://me:p%40ss@mlflow.example") == (
        "https://mlflow.example", {"MLFLOW_TRACKING_USERNAME": "me", "MLFLOW_TRACKING_PASSWORD": "p@ss"})


# Each place a URL may hold a password, read as SQLAlchemy reads it: the user part's may hold '/', '?' or '#'
# (urlsplit would end the host there), and libpq takes `password` and `sslpassword` from the query.
PASSWORD_FORMS = [
    ("postgresql+psycopg://alice:pa/ss@db.example:5432/ff", "pa/ss"),
    ("postgresql+psycopg://alice:pa?ss@db.example/ff", "pa?ss"),
    ("postgresql+psycopg://alice:pa#ss@db.example/ff?sslmode=require", "pa#ss"),
    ("postgresql+psycopg://alice@db.example/ff?password=s3cret-q&sslmode=require", "s3cret-q"),
    ("postgresql+psycopg://alice@db.example/ff?sslpassword=k3y-pass", "k3y-pass"),
]


@pytest.mark.parametrize(("url", "secret"), PASSWORD_FORMS)
def test_every_password_form_is_masked_encrypted_and_handed_to_workers_by_environment(url, secret, monkeypatch):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    assert secret not in config.mask(url) and "***" in config.mask(url)
    ws = Workspace(Paths.current())
    ws.configure(mlflow_uri=url)
    assert secret not in ws.paths.config_file.read_text() and secret not in json.dumps(ws.describe())
    back = sa.engine.make_url(Paths.current().mlflow_uri)  # decrypted in memory: what SQLAlchemy is given
    assert back == sa.engine.make_url(url)
    public, env = config.password_env(url)
    assert secret not in public and secret in json.dumps(env)
    worker = sa.engine.make_url(config.worker_uri(public, env))  # what a worker connects with: libpq adds PGPASSWORD
    assert (worker.set(password=env["PGPASSWORD"]) if "PGPASSWORD" in env else worker) == sa.engine.make_url(url)
    assert config.worker_uri(public, {}) == public


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:s3cr3t-pw@db:port/x", "postgresql+psycopg://u:s3cr3t-pw/x",
                                 "sqlite://u:s3cr3t-pw@h/x", "postgresql+psycopg://u:s3cr3t-pw@/db"])
def test_an_invalid_url_is_refused_without_repeating_its_password(url, monkeypatch):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    out = init("--database-url", url, ok=False)
    assert "database_url" in out and PASSWORD not in out


@pytest.mark.postgres
def test_a_password_holding_a_slash_never_reaches_the_file_or_health(postgres, monkeypatch, forgeflow_home):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    url = postgres.new_database().replace("postgres@", "postgres:pa/ss-9z@")  # loopback is trusted: it connects
    info = init("--database-url", url)
    assert "pa/ss-9z" not in json.dumps(info) and info["database_url"].startswith("postgresql+psycopg://postgres:***@")
    assert "pa/ss-9z" not in (forgeflow_home / config.CONFIG_FILE).read_text()
    from fastapi.testclient import TestClient

    from forgeflow.api.app import create_app

    with TestClient(create_app(Workspace.open(), background=False)) as http:
        assert "pa/ss-9z" not in http.get("/api/health").text


_FIRST_USE = """
from forgeflow.registry import models
from forgeflow.store.workspace import Workspace
Workspace.open()
client = models.client()
client.search_experiments(max_results=1)
client.search_registered_models(max_results=1)
"""


@pytest.mark.postgres
def test_processes_that_first_use_mlflow_on_a_fresh_postgres_database_together_all_succeed(postgres, tmp_path):
    """Servers and workers starting together on a new database: MLflow's tables are made once, under forgeflow's
    migration lock, by the first use of MLflow in each process (here the registry's client), instead of each
    process racing through MLflow's own migrations."""
    import subprocess
    import sys

    url = postgres.new_database()
    env = dict(os.environ, FORGEFLOW_DATABASE_URL=url, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env | {"FORGEFLOW_HOME": str(tmp_path / f"home{i}")}) for i in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(o[-1500:] for o in outputs)
