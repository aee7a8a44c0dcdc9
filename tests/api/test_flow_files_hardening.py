"""What an admin's files cannot do to the server: YAML alias bombs, huge error messages, symbolic links out of an
uploaded flow, half-installed flows, and pages that fetch from a CDN."""

import json
import textwrap

import httpx
import pytest

from forgeflow.errors import InvalidInput
from forgeflow.flows.connection_yaml import load_connection_yaml
from forgeflow.flows.loader import load_flow
from forgeflow.inference.model_folder import hf_model_dir
from forgeflow.training.jobfile import load_job_file

pytestmark = pytest.mark.anyio
SMALL = 10_000  # bytes: an error body is a message, never a dump


def write_flow(folder, *, code="def run(q: str) -> str:\n    return q.upper()\n", extra_yaml="", source="shout.py"):
    folder.mkdir(parents=True)
    (folder / "shout.py").write_text("from promptflow.core import tool\n\n@tool\n" + code)
    (folder / "flow.dag.yaml").write_text(extra_yaml + textwrap.dedent(f"""\
        inputs:
          question: {{type: string}}
        outputs:
          answer: {{type: string, reference: "${{shout.output}}"}}
        nodes:
        - name: shout
          type: python
          source: {{type: code, path: {source}}}
          inputs: {{q: "${{inputs.question}}"}}
        """))
    return folder


def alias_bomb(levels: int = 6) -> str:
    """A few hundred bytes of YAML whose aliases expand to 10**levels strings."""
    lines = ['l0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


async def test_an_alias_bomb_in_a_flow_file_is_refused_with_a_short_error(api, tmp_path):
    """issue 10, finding 9a: a "billion laughs" flow.dag.yaml answered with an error body of many megabytes."""
    folder = tmp_path / "bomb"
    folder.mkdir()
    (folder / "flow.dag.yaml").write_text("x:\n" + textwrap.indent(alias_bomb(), "  ") + textwrap.dedent(f"""\
        inputs:
          q: {{type: string, default: *a{5}}}
        outputs: {{}}
        nodes: []
        """))
    r = await api.post("/api/flows", json={"name": "bomb", "path": str(folder)})
    assert r.status_code == 400 and len(r.content) < SMALL, (r.status_code, len(r.content))
    assert "aliases" in r.json()["message"]
    assert (await api.get("/api/flows/bomb")).status_code == 404


@pytest.mark.parametrize("kind", ["prompty", "connection", "job", "mlmodel", "flex"])
def test_every_yaml_file_users_give_refuses_an_alias_bomb(tmp_path, kind):
    """issue 10, finding 9a: one loader reads every YAML file from users and refuses alias expansion past a limit."""
    bomb = alias_bomb()
    if kind == "prompty":
        path = tmp_path / "chat.prompty"
        path.write_text(f"---\nname: x\n{bomb}---\nsystem:\nhi\n")
        read = load_flow
    elif kind == "flex":
        (tmp_path / "flow.flex.yaml").write_text(bomb + "entry: m:f\n")
        path, read = tmp_path, load_flow
    elif kind == "connection":
        path, read = tmp_path / "conn.yaml", load_connection_yaml
        path.write_text(bomb + "type: custom\nname: c\n")
    elif kind == "job":
        path, read = tmp_path / "job.yaml", load_job_file
        path.write_text(bomb + "model: m\n")
    else:
        (tmp_path / "MLmodel").write_text(bomb + "flavors: {}\n")
        path, read = tmp_path, hf_model_dir
    with pytest.raises(InvalidInput, match="aliases") as info:
        read(path)
    assert len(info.value.message) < SMALL


async def test_error_bodies_are_bounded_whatever_the_message(api, tmp_path):
    """issue 10, finding 9a: error bodies repeated whatever they were given, at any size."""
    r = await api.post("/api/compute", json={"name": "x" * 200_000})
    assert r.status_code == 400 and len(r.content) < SMALL and "more characters" in r.json()["message"]
    loud = write_flow(tmp_path / "loud", code="def run(q: str) -> str:\n    raise ValueError('x' * 500_000)\n")
    assert (await api.post("/api/flows", json={"name": "loud", "path": str(loud)})).status_code == 201
    r = await api.post("/api/flows/loud/test", json={"inputs": {"question": "q"}})
    assert r.status_code == 424 and len(r.content) < SMALL, (r.status_code, len(r.content))
    async with api.stream("POST", "/api/flows/loud/test", json={"inputs": {"question": "q"}, "stream": True}) as s:
        events = [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    assert "error" in events[-1] and len(events[-1]["message"]) < SMALL


async def test_symbolic_links_in_an_uploaded_flow_are_refused(api, tmp_path):
    """issue 10, finding 9b: links in a flow folder were followed, copying files from anywhere into the workspace."""
    secret = tmp_path / "outside" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY")
    by_file = write_flow(tmp_path / "by-file")
    (by_file / "notes.txt").symlink_to(secret)
    by_folder = write_flow(tmp_path / "by-folder")
    (by_folder / "data").mkdir()
    (by_folder / "data" / "more").symlink_to(secret.parent, target_is_directory=True)
    for folder, link in [(by_file, "notes.txt"), (by_folder, "data/more")]:
        r = await api.post("/api/flows", json={"name": "linked", "path": str(folder)})
        assert r.status_code == 400 and r.json()["field"] == "path", r.text
        assert link in r.json()["message"] and "symbolic link" in r.json()["message"]
        assert (await api.get("/api/flows/linked")).status_code == 404
    home = tmp_path / "ffhome"
    assert not [p for p in home.rglob("*") if p.is_file() and p.read_bytes() == b"PRIVATE KEY"]


async def test_a_flow_that_fails_to_install_leaves_nothing_behind(api, tmp_path):
    """issue 10, finding 9c: a flow whose copy did not load was installed anyway, replacing the one before."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "helper.py").write_text("from promptflow import tool\n\n@tool\ndef run(q: str) -> str:\n    return q\n")
    # Loads where it is (helper.py comes from additional_includes outside the folder); its copy could not run.
    outside = write_flow(tmp_path / "src" / "uses-shared", source="helper.py",
                         extra_yaml="additional_includes: [../../shared/helper.py]\n")
    load_flow(outside)
    r = await api.post("/api/flows", json={"name": "half", "path": str(outside)})
    assert "half" not in [f["name"] for f in (await api.get("/api/flows")).json()]
    assert not (tmp_path / "ffhome" / "flows" / "half").exists()
    assert r.status_code == 400 and r.json()["field"] == "path" and "additional_includes" in r.json()["message"]

    good = write_flow(tmp_path / "good")
    assert (await api.post("/api/flows", json={"name": "half", "path": str(good)})).status_code == 201
    before = {p.name: p.read_bytes() for p in (tmp_path / "ffhome" / "flows" / "half").iterdir()}
    r = await api.post("/api/flows", json={"name": "half", "path": str(outside), "overwrite": True})
    assert {p.name: p.read_bytes() for p in (tmp_path / "ffhome" / "flows" / "half").iterdir()} == before
    assert r.status_code == 400, r.text
    r = await api.post("/api/flows/half/test", json={"inputs": {"question": "still here"}})
    assert r.status_code == 200 and r.json()["outputs"] == {"answer": "STILL HERE"}
    assert sorted(p.name for p in (tmp_path / "ffhome" / "flows").iterdir()) == ["half"]
    assert (await api.delete("/api/flows/half")).status_code == 200
    assert list((tmp_path / "ffhome" / "flows").iterdir()) == []


async def test_no_page_fetches_from_a_cdn_and_openapi_json_stays(app, api):
    """issue 10, finding 9d: /docs and /redoc loaded Swagger UI and ReDoc from a CDN."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as anonymous:
        for client in (api, anonymous):
            for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
                r = await client.get(page)
                # no such page: 404 with the admin token, 401 before the credential check for anyone else
                assert r.status_code == (404 if client is api else 401) and "cdn" not in r.text, (page, r.status_code)
    doc = (await api.get("/openapi.json")).json()
    assert "/api/flows" in doc["paths"]
