"""The model registry over REST and the CLI's download: versions, settings from the source job,
tags, description, archive/restore (and refused deployments), file download with progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeflow.api.app import create_app
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def ws():
    return Workspace.open()


@pytest.fixture
async def api(ws):
    import httpx

    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as c:
            c.app = app
            yield c


def completed_job(ws, app, tmp_path: Path) -> dict:
    """A job row marked Completed with an output folder in MLflow layout (no training needed)."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    from forgeflow.training.hyperparams import resolve_hyperparameters

    runner = app.state.ff.runner
    job = runner.submit(base_model="tiny-base", base_model_path=str(tmp_path), training_data=str(data),
                        hyperparameters=resolve_hyperparameters({"learning_rate": 0.001, "max_steps": 7}))
    out = job.job_dir / "outputs" / "mlflow_model"
    (out / "artifacts" / "model").mkdir(parents=True)
    (out / "MLmodel").write_text("flavors: {}\n")
    (out / "artifacts" / "model" / "config.json").write_text("{}")
    (out / "artifacts" / "model" / "weights.bin").write_bytes(b"\x01" * (3 * 1024 * 1024 + 17))
    ws.store.update("jobs", {"id": job.id}, {"status": "Completed", "metrics": {"train_loss": 1.5, "eval_loss": 1.7}})
    return runner.get(job.id).to_dict()


async def test_register_update_archive(api, ws, tmp_path):
    job = completed_job(ws, api.app, tmp_path)
    r = await api.post("/api/models", json={"name": "quill", "from_job": job["id"], "description": "first",
                                            "tags": {"team": "a"}})
    mv = r.json()
    assert r.status_code == 201 and mv["version"] == "1"
    assert mv["source_job"] == job["id"] and mv["base_model"] == "tiny-base" and mv["tags"] == {"team": "a"}
    assert mv["hyperparameters"]["learning_rate"] == 0.001 and mv["hyperparameters"]["max_steps"] == 7
    assert mv["metrics"]["eval_loss"] == 1.7
    await api.post("/api/models", json={"name": "quill", "from_job": job["id"]})

    r = await api.patch("/api/models/quill/versions/1", json={"description": "better", "set_tags": {"stage": "prod"},
                                                              "remove_tags": ["team"]})
    assert r.status_code == 200 and r.json()["description"] == "better" and r.json()["tags"] == {"stage": "prod"}
    r = await api.patch("/api/models/quill/versions/1", json={"set_tags": {"forgeflow.source_job": "x"}})
    assert r.status_code == 400 and "kept by forgeflow" in r.json()["message"]
    r = await api.patch("/api/models/quill/versions/1", json={"remove_tags": ["nope"]})
    assert r.status_code == 404 and "stage" in r.json()["message"]
    assert (await api.patch("/api/models/quill/versions/9", json={"description": "x"})).status_code == 404

    r = await api.post("/api/models/quill/versions/2/archive")
    assert r.status_code == 200 and r.json()["archived"] is True
    refs = [f"{m['name']}:{m['version']}" for m in (await api.get("/api/models")).json() if m.get("kind") == "registered"]
    assert refs == ["quill:1"]
    everything = (await api.get("/api/models", params={"include_archived": True})).json()
    assert [m["archived"] for m in everything if m.get("kind") == "registered"] == [False, True]
    assert (await api.get("/api/models/quill")).json()["version"] == "1"  # latest not archived
    assert (await api.get("/api/models/quill", params={"version": "2"})).json()["archived"] is True

    await api.post("/api/endpoints", json={"name": "ep-arch"})
    r = await api.post("/api/endpoints/ep-arch/deployments", json={"name": "blue", "model": "quill:2"})
    assert r.status_code == 409 and "archived" in r.json()["message"] and "model restore" in r.json()["message"]
    r = await api.post("/api/models/quill/versions/2/restore")
    assert r.status_code == 200 and r.json()["archived"] is False
    assert len([m for m in (await api.get("/api/models")).json() if m.get("kind") == "registered"]) == 2


async def test_version_files_for_download(api, ws, tmp_path):
    job = completed_job(ws, api.app, tmp_path)
    await api.post("/api/models", json={"name": "quill", "from_job": job["id"]})
    listing = (await api.get("/api/models/quill/versions/1/files")).json()
    paths = {f["path"]: f["size"] for f in listing["files"]}
    assert paths["artifacts/model/weights.bin"] == 3 * 1024 * 1024 + 17 and "MLmodel" in paths
    assert listing["total_bytes"] == sum(paths.values())
    r = await api.get("/api/models/quill/versions/1/files/artifacts/model/config.json")
    assert r.status_code == 200 and r.content == b"{}"
    r = await api.get("/api/models/quill/versions/1/files/..%2F..%2Fspec.json")
    assert r.status_code == 404


def test_cli_download_copies_the_folder(live_like_client, tmp_path):
    from forgeflow.cli.download import download_version
    from forgeflow.errors import Conflict

    client, source = live_like_client
    out = tmp_path / "dl" / "quill-1"
    result = download_version(client, "quill", "1", out, quiet=True)
    assert result["files"] == 3 and result["bytes"] == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert (out / "artifacts" / "model" / "weights.bin").read_bytes() == (source / "artifacts/model/weights.bin").read_bytes()
    assert not (tmp_path / "dl" / ".quill-1.partial").exists()
    with pytest.raises(Conflict, match="not empty"):
        download_version(client, "quill", "1", out, quiet=True)


@pytest.fixture
def live_like_client(ws, tmp_path):
    """A Client against a real uvicorn on loopback in a thread (download streams over real HTTP)."""
    import threading
    import time

    import uvicorn

    from forgeflow.client import Client
    from forgeflow.processes import free_port
    from forgeflow.registry import models

    src = tmp_path / "src"
    (src / "artifacts" / "model").mkdir(parents=True)
    (src / "MLmodel").write_text("flavors: {}\n")
    (src / "artifacts" / "model" / "config.json").write_text("{}")
    (src / "artifacts" / "model" / "weights.bin").write_bytes(bytes(range(256)) * 9000)
    models.register("quill", src)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ws, background=False), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield Client(f"http://127.0.0.1:{port}", token=ws.admin_token()), src
    server.should_exit = True
    thread.join(timeout=10)
