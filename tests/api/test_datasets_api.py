"""Datasets over REST: prepare from the sample, upload, validation with line numbers, row preview."""

import json

import pytest

pytestmark = pytest.mark.anyio

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


async def test_prepare_the_sample_into_two_datasets(api):
    r = await api.post("/api/datasets/prepare", json={"dataset": "sample", "prefix": "quill"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["train"]["name"] == "quill_train.jsonl" and body["test"]["name"] == "quill_test.jsonl"
    assert body["train"]["rows"] + body["test"]["rows"] == body["total_rows"] == 146
    assert body["train"]["validation"]["ok"] and body["train"]["validation"]["problems"] == []
    names = [d["name"] for d in (await api.get("/api/datasets")).json()]
    assert names == ["quill_test.jsonl", "quill_train.jsonl"]
    again = await api.post("/api/datasets/prepare", json={"dataset": "sample", "prefix": "quill"})
    assert again.status_code == 409 and again.json()["field"] == "prefix"
    rows = (await api.get("/api/datasets/quill_train.jsonl/rows", params={"limit": 3})).json()
    assert rows["total"] == body["train"]["rows"] and len(rows["rows"]) == 3
    assert rows["rows"][0]["line"] == 1 and rows["rows"][0]["messages"][-1]["role"] == "assistant"


async def test_upload_reports_bad_rows_by_line(api, ws):
    body = jsonl(GOOD, "{not json", "", {"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}, GOOD)
    r = await api.put("/api/datasets/mixed.jsonl", content=body)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["rows"] == 5 and ds["format"] == "jsonl" and ds["bytes"] == len(body)
    v = ds["validation"]
    assert not v["ok"] and v["good_rows"] == 2 and v["blank_lines"] == 1
    lines = {p["line"] for p in v["problems"]}
    assert lines == {2, 4, 5} and all(p["unit"] == "line" for p in v["problems"])
    assert any("not valid JSON" in p["message"] for p in v["problems"])
    preview = (await api.get("/api/datasets/mixed.jsonl/rows", params={"offset": 1, "limit": 3})).json()
    assert [row["line"] for row in preview["rows"]] == [2, 4, 5]
    assert "error" in preview["rows"][0] and "messages" not in preview["rows"][0]
    assert (ws.paths.datasets / "mixed.jsonl").read_bytes() == body


async def test_upload_refusals_keep_what_was_there(api, ws, monkeypatch):
    assert (await api.put("/api/datasets/keep.jsonl", content=jsonl(GOOD))).status_code == 201
    r = await api.put("/api/datasets/keep.jsonl", content=jsonl(GOOD, GOOD))
    assert r.status_code == 409 and "overwrite=true" in r.json()["message"]
    monkeypatch.setenv("FORGEFLOW_MAX_DATASET_BYTES", "100")
    r = await api.put("/api/datasets/keep.jsonl", params={"overwrite": "true"}, content=b"x" * 500)
    assert r.status_code == 413
    assert (ws.paths.datasets / "keep.jsonl").read_bytes() == jsonl(GOOD)
    assert [p.name for p in ws.paths.datasets.iterdir()] == ["keep.jsonl"]  # no temporary file left
    for bad in ("%2e%2e%2fescape.jsonl", "..%2Fescape.jsonl", "no-extension", ".hidden.jsonl", "x.exe"):
        r = await api.put(f"/api/datasets/{bad}", content=jsonl(GOOD))
        assert r.status_code in (400, 404), bad
    assert not (ws.paths.root / "escape.jsonl").exists()
    assert (await api.put("/api/datasets/empty.jsonl", content=b"")).status_code == 400
    assert (await api.get("/api/datasets/missing.jsonl")).status_code == 404
    assert (await api.get("/api/datasets/keep.jsonl/rows", params={"limit": 0})).status_code == 400
    assert (await api.delete("/api/datasets/keep.jsonl")).json() == {"deleted": "keep.jsonl"}
    assert (await api.get("/api/datasets")).json() == []


async def test_an_unreadable_file_lists_and_says_why(api):
    r = await api.put("/api/datasets/broken.csv", content=b"a,b\n1,2\n")
    assert r.status_code == 201
    v = r.json()["validation"]
    assert not v["ok"] and "messages" in v["problems"][0]["message"]
    assert (await api.get("/api/datasets")).json()[0]["name"] == "broken.csv"


PAIR = {"prompt": "Who founded Quillfeather?", "chosen": "Ysolde Marrowick.", "rejected": "I don't know."}


async def test_preference_files_validate_and_preview_with_method_dpo(api):
    """A preference file is checked as chat rows unless method=dpo asks otherwise; the chat check names dpo as the
    method every row fits, and the dpo check lists the bad rows by line."""
    body = jsonl(PAIR, {"prompt": [{"role": "user", "content": "q"}], "chosen": "a"}, "",
                 PAIR | {"chosen": [{"role": "assistant", "content": "Ysolde."}]})
    r = await api.put("/api/datasets/prefs.jsonl", params={"method": "dpo"}, content=body)
    assert r.status_code == 201, r.text
    v = r.json()["validation"]
    assert v["method"] == "dpo" and not v["ok"] and (v["rows"], v["good_rows"], v["blank_lines"]) == (3, 2, 1)
    assert v["problems"] == [{"line": 2, "unit": "line", "message": "missing 'rejected': a preference row has "
                                                                   "'prompt', 'chosen' and 'rejected'"}]
    assert v["fits_method"] is None

    as_chat = (await api.get("/api/datasets/prefs.jsonl")).json()["validation"]
    assert as_chat["method"] == "sft" and as_chat["bad_rows"] == 3 and as_chat["fits_method"] is None
    assert as_chat["problems"][0]["message"].startswith("missing 'messages': this is a preference row")

    good = jsonl(PAIR, PAIR | {"rejected": "Nobody."})
    assert (await api.put("/api/datasets/good.jsonl", content=good)).json()["validation"]["fits_method"] == "dpo"
    as_pairs = (await api.get("/api/datasets/good.jsonl", params={"method": "dpo"})).json()["validation"]
    assert as_pairs["ok"] and as_pairs["problems"] == [] and as_pairs["turns"] == 4

    preview = (await api.get("/api/datasets/prefs.jsonl/rows", params={"method": "dpo"})).json()
    assert preview["method"] == "dpo" and [row["line"] for row in preview["rows"]] == [1, 2, 4]
    first, second, third = preview["rows"]
    assert first["prompt"] == [{"role": "user", "content": PAIR["prompt"]}]
    assert first["rejected"] == [{"role": "assistant", "content": PAIR["rejected"]}]
    assert second["error"].startswith("missing 'rejected'") and "prompt" not in second
    assert third["chosen"] == [{"role": "assistant", "content": "Ysolde."}]
    chat_preview = (await api.get("/api/datasets/prefs.jsonl/rows")).json()["rows"]
    assert all("error" in row and "messages" not in row for row in chat_preview)


async def test_an_unknown_method_is_a_400_naming_method(api, ws):
    assert (await api.put("/api/datasets/good.jsonl", content=jsonl(GOOD))).status_code == 201
    for call in (api.get("/api/datasets/good.jsonl", params={"method": "ppo"}),
                 api.get("/api/datasets/good.jsonl/rows", params={"method": "ppo"}),
                 api.put("/api/datasets/new.jsonl", params={"method": "ppo"}, content=jsonl(GOOD))):
        r = await call
        assert r.status_code == 400 and r.json()["field"] == "method", r.text
        assert "is not one of sft, dpo" in r.json()["message"]
    assert not (ws.paths.datasets / "new.jsonl").exists()  # refused before anything was stored
