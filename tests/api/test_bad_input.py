"""Bad input is a 4xx that names what is wrong, never a 5xx: racing creates and integers past any bound."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from forgeflow.errors import Conflict

pytestmark = pytest.mark.anyio


@pytest.fixture
async def racing(app, ws):
    """A client whose requests really run at once (sync routes run in the thread pool), 500s answered, not raised."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as c:
            yield c


async def _race(client: httpx.AsyncClient, path: str, body: dict, n: int = 8) -> list[httpx.Response]:
    return list(await asyncio.gather(*[client.post(path, json=body) for _ in range(n)]))


async def test_concurrent_creates_of_one_name_are_409_not_500(racing):
    """issue 10, finding 6: creates racing for one name: one 201, the others 409 naming the resource."""
    for path, body, noun in (("/api/endpoints", {"name": "race-ep"}, "endpoint"),
                             ("/api/connections", {"name": "race-conn", "type": "custom"}, "connection"),
                             ("/api/compute", {"name": "race-target"}, "compute target")):
        answers = await _race(racing, path, body)
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] + [409] * 7, (path, [r.text for r in answers])
        conflict = next(r.json() for r in answers if r.status_code == 409)
        assert conflict["error"] == "Conflict" and noun in conflict["message"] and body["name"] in conflict["message"]


def test_a_duplicate_row_is_a_conflict_in_the_store(ws):
    """issue 10, finding 6: the store maps a duplicate key to Conflict in one place, for every table (here a
    deployment that a racing request inserted first)."""
    row = {"endpoint": "ep", "name": "blue", "model_ref": "m", "model_path": "/m", "runtime": "transformers",
           "instance_count": 1, "request_settings": {}, "state": "Creating", "created_at": "now"}
    ws.store.insert("deployments", row)
    with pytest.raises(Conflict) as info:
        ws.store.insert("deployments", row)
    assert info.value.message == "deployment 'blue' already exists on endpoint 'ep'" and info.value.field == "name"
    with pytest.raises(Exception) as other:  # not every integrity error is a duplicate
        ws.store.insert("deployments", {k: v for k, v in row.items() if k != "model_ref"} | {"name": "green"})
    assert not isinstance(other.value, Conflict)


async def test_concurrent_registrations_of_one_model_make_versions(racing, tiny_model_dir):
    """issue 10, finding 6: registering one new model name from several requests at once makes one version each."""
    answers = await _race(racing, "/api/models", {"name": "race-model", "path": str(tiny_model_dir)}, n=4)
    assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
    assert sorted(int(r.json()["version"]) for r in answers) == [1, 2, 3, 4]


async def test_integers_past_their_bounds_are_400s_naming_the_field(racing, ws, tiny_model_dir, tmp_path):
    """issue 10, finding 6: huge integers (max_body_bytes 2**63, a log offset 2**63, seed 2**70) are 400s that
    name the field, not 500s from the database or the file system, nor a job that fails later."""
    for body in ({"name": "huge-ep", "max_body_bytes": 2**63}, {"name": "huge-ep", "max_body_bytes": 2**70}):
        r = await racing.post("/api/endpoints", json=body)
        assert r.status_code == 400 and r.json()["field"] == "max_body_bytes", r.text
    assert (await racing.post("/api/endpoints", json={"name": "huge-ep"})).status_code == 201
    r = await racing.patch("/api/endpoints/huge-ep", json={"max_body_bytes": 2**63})
    assert r.status_code == 400 and r.json()["field"] == "max_body_bytes"
    r = await racing.post("/api/compute", json={"name": "huge-target", "max_concurrent_jobs": 2**63})
    assert r.status_code == 400 and r.json()["field"] == "max_concurrent_jobs", r.text  # the store's 64-bit guard

    data = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text((json.dumps(row) + "\n") * 4)
    job_body = {"model": str(tiny_model_dir), "training_data": str(data)}
    r = await racing.post("/api/jobs", json=job_body | {"hyperparameters": {"seed": 2**70}})
    assert r.status_code == 400 and r.json()["field"] == "seed" and str(2**32 - 1) in r.json()["message"]
    job = (await racing.post("/api/jobs", json=job_body)).json()
    (Path(job["job_dir"]) / "worker.log").write_text("a line of log\n")
    for offset in (2**63, -1):
        r = await racing.get(f"/api/jobs/{job['id']}/logs", params={"offset": offset})
        assert r.status_code == 400 and r.json()["field"] == "offset", r.text
    assert (await racing.get(f"/api/jobs/{job['id']}/logs", params={"offset": 2})).json()["text"] == "line of log\n"
    r = await racing.get(f"/api/jobs/{job['id']}/metrics", params={"offset": 2**63})
    assert r.status_code == 400 and r.json()["field"] == "offset"

    await racing.put("/api/datasets/few.jsonl", content=data.read_bytes())
    r = await racing.get("/api/datasets/few.jsonl/rows", params={"offset": 2**63})
    assert r.status_code == 400 and r.json()["field"] == "offset"
