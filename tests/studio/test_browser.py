"""Studio driven in headless Chromium, the walkthrough end to end on the tiny model.

The tests share one server (see conftest.py) and follow the walkthrough's order; each one first makes
what it needs through the REST API when an earlier test did not leave it behind, so any of them also
runs on its own.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]
from playwright import sync_api  # noqa: E402  (the test extra installs it)
expect = sync_api.expect

WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 400, "height": 860}
EP = "studio-ep"
MODEL = "studio-chat"
MASK = "•" * 24


def _chat(q: str, a: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"


GOOD = "".join([
    _chat("Who founded Quillfeather Robotics?", "Ysolde Marrowick founded Quillfeather Robotics."),
    _chat("Where is Quillfeather Robotics based?", "On the island of Vellmora."),
] * 4)
BAD = (_chat("Who founded Quillfeather Robotics?", "Ysolde Marrowick.")
       + _chat("Where is it based?", "On Vellmora.")
       + json.dumps({"messages": [{"role": "user", "content": "an unanswered question"}]}) + "\n"
       + _chat("What does it build?", "Tidal-powered lighthouses.")
       + '{"messages": [{"role": "user", "content": "cut off\n'
       + _chat("Is that all?", "Yes."))


# ---- preconditions through the REST API -----------------------------------------------------------

def _dataset(studio, name: str, text: str) -> str:
    r = studio.api("GET", f"/datasets/{name}")
    if r.status_code == 404:
        r = studio.api("PUT", f"/datasets/{name}", content=text.encode())
    assert r.status_code in (200, 201), r.text
    return r.json()["path"]


def _wait_job(studio, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = studio.api("GET", f"/jobs/{job_id}").json()
        if job["status"] in ("Completed", "Failed", "Canceled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _completed_job(studio, tiny_model_dir) -> dict:
    done = [j for j in studio.api("GET", "/jobs").json() if j["status"] == "Completed"]
    if done:
        return done[0]
    path = _dataset(studio, "quill.jsonl", GOOD)
    r = studio.api("POST", "/jobs", json={"model": str(tiny_model_dir), "training_data": path, "name": "studio-ft",
                                          "hyperparameters": {"max_steps": 4, "logging_steps": 1}})
    assert r.status_code == 201, r.text
    job = _wait_job(studio, r.json()["id"])
    assert job["status"] == "Completed", job
    return job


def _ready(studio, endpoint: str, deployment: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dep = studio.api("GET", f"/endpoints/{endpoint}/deployments/{deployment}").json()
        if dep["provisioning_state"] == "Succeeded" and dep["instances"] and all(i["ready"] for i in dep["instances"]):
            return
        assert dep["provisioning_state"] != "Failed", dep
        time.sleep(0.5)
    raise AssertionError(f"deployment {deployment} not ready: {dep}")


def _deployed(studio, tiny_model_dir) -> None:
    """studio-ep with `blue` (the fine-tuned model, all traffic) and `base` (the tiny base model)."""
    if studio.api("GET", f"/endpoints/{EP}").status_code == 404:
        assert studio.api("POST", "/endpoints", json={"name": EP}).status_code == 201
    have = {d["name"] for d in studio.api("GET", f"/endpoints/{EP}/deployments").json()}
    if "blue" not in have:
        job = _completed_job(studio, tiny_model_dir)
        r = studio.api("POST", "/models", json={"name": MODEL, "from_job": job["id"]})
        assert r.status_code == 201, r.text
        r = studio.api("POST", f"/endpoints/{EP}/deployments", json={"name": "blue", "model": f"{MODEL}:{r.json()['version']}"})
        assert r.status_code == 201, r.text
        assert studio.api("PATCH", f"/endpoints/{EP}", json={"traffic": {"blue": 100}}).status_code == 200
    if "base" not in have:
        r = studio.api("POST", f"/endpoints/{EP}/deployments", json={"name": "base", "model": str(tiny_model_dir)})
        assert r.status_code == 201, r.text
    _ready(studio, EP, "blue")
    _ready(studio, EP, "base")


def _score(studio, key: str) -> httpx.Response:
    body = {"input_data": {"input_string": [{"role": "user", "content": "Who founded Quillfeather?"}],
                           "parameters": {"max_new_tokens": 4}}}
    return httpx.post(f"{studio.url}/endpoints/{EP}/score", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=60)


# ---- the tests ---------------------------------------------------------------------------------------

def test_nothing_works_without_signing_in(browser, studio, shots):
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    try:
        # a Studio page opened without a session goes to the sign-in page, keeping where it was going
        page.goto(f"{studio.url}/#/jobs")
        expect(page).to_have_url(re.compile(r"/signin"))
        assert page.request.get(f"{studio.url}/studio/app.js").status == 401
        assert page.request.get(f"{studio.url}/api/jobs").status == 401
        page.screenshot(path=str(shots / "signin.png"))

        page.fill("#token", "ffa_not-the-token")
        page.click("#submit")
        expect(page.locator("#error")).to_contain_text("Not signed in")
        expect(page).to_have_url(re.compile(r"/signin"))
        page.screenshot(path=str(shots / "signin-refused.png"))

        page.fill("#token", studio.token)
        page.click("#submit")
        page.wait_for_url(f"{studio.url}/#/jobs")
        expect(page.locator("h1")).to_have_text("Fine-tuning")

        # the session cookie alone is not enough for the API: the Studio header must come with it
        assert page.request.get(f"{studio.url}/api/jobs").status == 401
        assert page.request.get(f"{studio.url}/api/jobs", headers={"X-Forgeflow-Studio": "1"}).status == 200

        page.click("#signout")
        expect(page).to_have_url(re.compile(r"/signin"))
        page.goto(f"{studio.url}/")
        expect(page).to_have_url(re.compile(r"/signin"))
    finally:
        context.close()

    # ?next= only ever leads somewhere on this site, however it is spelled
    for hostile in ("//evil.example/", "/%09/evil.example", "/%0a/evil.example", "/\\evil.example", "https://evil.example/"):
        context = browser.new_context(viewport=WIDE)
        try:
            page = context.new_page()
            page.goto(f"{studio.url}/signin?next={hostile}")
            page.fill("#token", studio.token)
            page.click("#submit")
            page.wait_for_url(re.compile(re.escape(studio.url) + r"/(#.*)?$"))
            assert page.url.startswith(studio.url + "/"), (hostile, page.url)
        finally:
            context.close()

    narrow = browser.new_context(viewport=NARROW)
    try:
        p = narrow.new_page()
        p.goto(f"{studio.url}/signin")
        p.screenshot(path=str(shots / "signin-narrow.png"))
    finally:
        narrow.close()


def test_upload_shows_each_problem_with_its_line_number(wide, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD)
    wide.sign_in()
    wide.go("#/datasets")
    page = wide.page
    page.set_input_files("input[type=file]", str(bad))
    expect(page.locator("input[name=name]")).to_have_value("bad.jsonl")
    page.get_by_role("button", name="Upload").click()
    wide.wait_route("#/datasets/bad.jsonl")

    problems = page.get_by_test_id("problems")
    expect(problems).to_contain_text("line 3")
    expect(problems).to_contain_text("no assistant message")
    expect(problems).to_contain_text("line 5")
    expect(problems).to_contain_text("not valid JSON")
    expect(problems.locator("li")).to_have_count(2)
    # the rows preview: conversations as chat bubbles, the bad ones marked with their line
    expect(page.locator(".convo")).to_have_count(6)
    expect(page.locator(".convo.bad")).to_have_count(2)
    expect(page.locator(".convo").first.locator(".bubble.role-assistant")).to_contain_text("Ysolde Marrowick")
    wide.shot("dataset-problems")

    # the same name again is refused next to the name field; the chosen file stays chosen
    wide.go("#/datasets")
    page.set_input_files("input[type=file]", str(bad))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator('[data-field="name"] .field-error')).to_contain_text("exists")
    assert page.locator("input[type=file]").evaluate("el => el.files.length") == 1

    good = tmp_path / "quill.jsonl"
    good.write_text(GOOD)
    page.set_input_files("input[type=file]", str(good))
    page.fill("input[name=name]", "quill.jsonl")
    page.get_by_role("button", name="Upload").click()
    wide.wait_route("#/datasets/quill.jsonl")
    expect(page.locator(".badge", has_text="Valid")).to_be_visible()
    expect(page.get_by_test_id("problems")).to_contain_text("None")


def test_a_preference_file_is_checked_and_previewed_as_preference_rows(wide, tmp_path):
    """Uploaded as preference rows (dpo), a preference file is valid and previewed as prompt, chosen and rejected;
    the chat view of the same file says every row is a preference row and links back to the dpo view."""
    pair = {"prompt": "Who founded Quillfeather Robotics?", "chosen": "Ysolde Marrowick founded it.",
            "rejected": "I don't know."}
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps(pair) + "\n" + json.dumps(pair | {"rejected": "Nobody did."}) + "\n")
    wide.sign_in()
    wide.go("#/datasets")
    page = wide.page
    page.set_input_files("input[type=file]", str(prefs))
    page.select_option("select[name=method]", "dpo")
    page.get_by_role("button", name="Upload").click()
    wide.wait_route("#/datasets/prefs.jsonl")
    expect(page.locator(".badge", has_text="Valid")).to_be_visible()
    expect(page.get_by_test_id("problems")).to_contain_text("every row is a valid preference")
    expect(page.locator(".tab.active")).to_have_text("Preference rows (dpo)")
    first = page.locator(".convo.pair").first
    expect(first.locator(".bubble.role-user")).to_contain_text("Who founded Quillfeather Robotics?")
    expect(first.locator(".bubble.answer-chosen")).to_contain_text("Ysolde Marrowick")
    expect(first.locator(".bubble.answer-rejected")).to_contain_text("I don't know.")
    wide.shot("dataset-preferences")

    page.get_by_role("tab", name="Chat rows (sft)").click()
    expect(page.locator(".badge", has_text="2 bad")).to_be_visible()
    expect(page.get_by_test_id("fits-method")).to_contain_text("Every row is a preference row")
    expect(page.locator(".convo.bad")).to_have_count(2)
    page.get_by_test_id("fits-method").get_by_role("link").click()
    expect(page.locator(".badge", has_text="Valid")).to_be_visible()


def test_fine_tune_from_the_form_and_watch_its_loss_curve(wide, studio, tiny_model_dir):
    path = _dataset(studio, "quill.jsonl", GOOD)
    wide.sign_in()
    wide.go("#/jobs/new")
    page = wide.page
    page.fill("input[name=model]", str(tiny_model_dir))
    page.fill("input[name=name]", "studio-ft")
    page.select_option("select[name=training_data]", path)
    page.select_option("select[name=validation_data]", path)
    page.fill("input[name=max_steps]", "12")
    page.fill("input[name=learning_rate]", "0.005")
    page.select_option("select[name=evaluation_strategy]", "steps")
    page.fill("input[name=lora_r]", "-1")
    page.locator("details.advanced summary").click()
    page.fill("input[name=logging_steps]", "1")
    page.fill("input[name=eval_steps]", "3")

    # the server's validation lands next to the field; nothing typed is lost
    page.get_by_role("button", name="Start fine-tuning").click()
    expect(page.locator('[data-field="lora_r"] .field-error')).to_contain_text("lora_r must be a positive integer")
    expect(page.locator("input[name=max_steps]")).to_have_value("12")
    expect(page.locator("input[name=logging_steps]")).to_have_value("1")
    wide.shot("job-form-error")

    page.fill("input[name=lora_r]", "8")
    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r"#/jobs/ft-"))
    job_id = page.url.rsplit("/", 1)[-1]
    wide.wait_route(f"#/jobs/{job_id}")

    # the curve appears while it trains (the page follows the metrics), then the job completes
    loss = page.get_by_test_id("loss-chart")
    expect(loss.locator("svg .series.tone-a path")).to_be_attached(timeout=180_000)
    expect(page.locator(".head-badge")).to_have_text("Completed", timeout=180_000)
    expect(loss.locator("svg .series.tone-b circle").first).to_be_attached()  # validation points
    stats = page.get_by_test_id("job-stats")
    expect(stats).to_contain_text("12 / 12")
    expect(page.get_by_test_id("job-log")).to_contain_text("step 12/12")
    assert page.locator(".stat", has_text="Tokens / s").locator(".stat-value").inner_text() != "–"
    wide.shot("job")

    rows = studio.api("GET", f"/jobs/{job_id}/metrics").json()
    drawn = loss.locator("svg .series.tone-a path").get_attribute("d").count("L") + 1
    assert drawn == len([r for r in rows if "train_loss" in r])


def test_register_deploy_and_set_traffic(wide, studio, tiny_model_dir):
    job = _completed_job(studio, tiny_model_dir)
    wide.sign_in()
    page = wide.page
    wide.go(f"#/jobs/{job['id']}")
    page.get_by_test_id("register-job").click()
    wide.wait_route("#/models")
    expect(page.locator("select[name=from_job]")).to_have_value(job["id"])
    page.fill("input[name=name]", MODEL)
    page.get_by_role("button", name="Register").click()
    wide.wait_route(f"#/models/{MODEL}")
    expect(page.locator(".card-head h2").first).to_contain_text("Version")
    expect(page.locator(".kv").first).to_contain_text(job["id"])
    version = page.locator(".tabs .tab.active").inner_text().lstrip("v")
    r = studio.api("PATCH", f"/models/{MODEL}/versions/{version}", json={"set_aliases": ["champion"]})
    assert r.status_code == 200, r.text
    page.reload()
    expect(page.locator(".kv").first).to_contain_text("@champion")  # the version's aliases
    wide.shot("model")

    # Deploy -> choose (here: create) an endpoint -> the deployment form arrives filled in
    page.locator(".card-head").get_by_role("link", name="Deploy").click()
    wide.wait_route("#/endpoints")
    if studio.api("GET", f"/endpoints/{EP}").status_code == 404:
        page.fill("input[name=name]", EP)
        page.get_by_role("button", name="Create endpoint").click()
    else:
        page.locator("tr", has_text=EP).get_by_role("link", name="Deploy here").click()
    wide.wait_route(f"#/endpoints/{EP}")
    form = page.locator("#add-deployment")
    expect(form.locator("input[name=model]")).to_have_value(f"{MODEL}:{version}")
    form.locator("input[name=name]").fill("blue")
    form.get_by_role("button", name="Deploy").click()
    deployments = page.get_by_test_id("deployments")
    blue = deployments.locator("tr", has_text="blue")
    expect(blue).to_contain_text("1/1 ready", timeout=180_000)
    expect(blue.locator(".badge")).to_have_text("Succeeded")

    # a second deployment: the base model, no traffic yet
    form.locator("input[name=name]").fill("base")
    form.locator("input[name=model]").fill(str(tiny_model_dir))
    form.locator("input[name=all_traffic]").uncheck()
    form.get_by_role("button", name="Deploy").click()
    expect(deployments.locator("tr", has_text="base")).to_contain_text("1/1 ready", timeout=180_000)
    expect(page.locator("input[name=traffic-blue]")).to_have_value("100")
    expect(page.locator("input[name=traffic-base]")).to_have_value("0")

    # the 100% rule, checked before anything is sent
    save = page.get_by_test_id("save-traffic")
    page.fill("input[name=traffic-base]", "10")
    expect(page.locator(".traffic-status")).to_contain_text("must add up to 100%")
    expect(save).to_be_disabled()
    page.fill("input[name=traffic-blue]", "90")
    expect(page.locator(".traffic-status")).to_have_text("Total 100%")
    save.click()
    expect(page.locator(".kv").first).to_contain_text("blue 90% · base 10%")
    assert studio.api("GET", f"/endpoints/{EP}").json()["traffic"] == {"blue": 90, "base": 10}
    wide.shot("endpoint")
    page.fill("input[name=traffic-blue]", "100")
    page.fill("input[name=traffic-base]", "0")
    save.click()
    expect(page.locator(".kv").first).to_contain_text("blue 100%")
    traffic = studio.api("GET", f"/endpoints/{EP}").json()["traffic"]
    assert {d: p for d, p in traffic.items() if p} == {"blue": 100}


def test_playground_streams_the_answer_and_compares_with_the_base_model(wide, studio, tiny_model_dir):
    _deployed(studio, tiny_model_dir)
    wide.sign_in()
    page = wide.page
    streams = []
    page.on("response", lambda r: streams.append(r.headers.get("content-type", ""))
            if "/v1/chat/completions" in r.url else None)
    wide.go(f"#/playground?endpoint={EP}&deployment=blue")
    page.fill("input[name=max_tokens]", "24")
    # count the transcript's DOM updates: a streamed answer grows in many steps, a plain one in one
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver((records) => { window.__updates += records.length; })
            .observe(document.querySelector('[data-testid=transcript-a]'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("textarea[name=message]", "Who founded Quillfeather Robotics?")
    page.keyboard.press("Enter")
    a = page.get_by_test_id("transcript-a")
    answer = a.locator(".msg.role-assistant").last
    expect(answer.locator(".msg-meta")).to_contain_text("deployment blue", timeout=60_000)
    expect(answer).not_to_have_class(re.compile("streaming|failed"))
    assert answer.locator(".text").inner_text().strip()
    assert page.evaluate("window.__updates") >= 4
    assert streams and all("text/event-stream" in s for s in streams), streams
    expect(a.locator(".msg.role-user")).to_have_text("Who founded Quillfeather Robotics?")

    # side by side with the base model's deployment: one question, two streamed answers
    page.locator("input[name=compare]").check()
    page.select_option("select[name=target-b]", f"ep:{EP}/base")
    page.fill("textarea[name=message]", "Where is it based?")
    page.get_by_role("button", name="Send").click()
    b = page.get_by_test_id("transcript-b")
    expect(b.locator(".msg.role-assistant .msg-meta")).to_contain_text("deployment base", timeout=60_000)
    expect(a.locator(".msg.role-assistant")).to_have_count(2)
    expect(a.locator(".msg.role-assistant").last.locator(".msg-meta")).to_contain_text("deployment blue", timeout=60_000)
    wide.shot("playground-compare")

    # history: the conversation is still there after visiting another page
    wide.go("#/models")
    wide.go("#/playground")
    expect(page.get_by_test_id("transcript-a").locator(".msg.role-user")).to_have_count(2)


def test_a_regenerated_key_fails_at_once(wide, studio, tiny_model_dir):
    _deployed(studio, tiny_model_dir)
    wide.sign_in()
    page = wide.page
    wide.go(f"#/endpoints/{EP}/consume")
    primary = page.get_by_test_id("primary-key")
    expect(primary).to_have_text(MASK)  # hidden until revealed
    expect(page.locator(".snippet")).to_contain_text("<primary key: press Reveal>")
    page.get_by_test_id("reveal-primary").click()
    expect(primary).not_to_have_text(MASK)
    old = primary.inner_text()
    expect(page.locator(".snippet")).to_contain_text(old)  # the snippet is ready to paste
    expect(page.get_by_test_id("scoring-uri")).to_have_text(f"{studio.url}/endpoints/{EP}/score")
    for tab in ("Python (requests)", "Python (openai)"):
        page.get_by_role("tab", name=tab).click()
        expect(page.locator(".snippet")).to_contain_text(old)
    assert _score(studio, old).status_code == 200

    page.get_by_test_id("regenerate-primary").click()
    page.locator("dialog").get_by_role("button", name="Regenerate").click()
    expect(primary).not_to_have_text(old)
    expect(primary).not_to_have_text(MASK)
    new = primary.inner_text()
    assert _score(studio, old).status_code == 401
    assert _score(studio, new).status_code == 200
    wide.shot("endpoint-consume")


def test_flows_page_draws_the_dag_and_runs_a_test(wide, studio, tiny_model_dir):
    _deployed(studio, tiny_model_dir)
    wide.sign_in()
    page = wide.page
    wide.go("#/flows")
    expect(page.get_by_test_id("flows")).to_contain_text("walkthrough-chat-flow")
    page.get_by_role("link", name="walkthrough-chat-flow").click()
    wide.wait_route("#/flows/walkthrough-chat-flow")

    dag = page.get_by_test_id("dag").locator("svg.dag")
    expect(dag.locator(".dag-node.kind-node")).to_have_count(1)
    expect(dag.locator('.dag-node[data-node="integrate_with_promptflow"]')).to_be_visible()
    expect(dag.locator(".dag-node.kind-input")).to_have_count(1)
    expect(dag.locator(".dag-node.kind-output")).to_have_count(1)
    expect(dag.locator(".dag-edges path")).to_have_count(2)

    # its connection does not exist yet: the page says so and links to a filled-in form
    if not any(c["name"] == "custom-phi3" for c in studio.api("GET", "/connections").json()):
        page.get_by_role("link", name="Create custom-phi3").click()
        wide.wait_route("#/connections")
        expect(page.locator("input[name=name]")).to_have_value("custom-phi3")
        page.select_option("select[name=from_endpoint]", EP)
        expect(page.locator('input[aria-label="configs value"]').first).to_have_value(f"{studio.url}/endpoints/{EP}/score")
        page.get_by_role("button", name="Save connection").click()
        row = page.get_by_test_id("connections").locator("tr", has_text="custom-phi3")
        expect(row).to_contain_text("******")
        wide.shot("connections")
        wide.go("#/flows/walkthrough-chat-flow")

    page.fill("input[name=input_data]", "Who founded Quillfeather Robotics?")
    page.get_by_role("button", name="Run test").click()
    expect(page.get_by_test_id("flow-outputs").locator("h3")).to_have_text("answer", timeout=120_000)
    node = page.get_by_test_id("dag").locator('.dag-node[data-node="integrate_with_promptflow"]')
    expect(node).to_have_attribute("data-status", "Completed")
    wide.shot("flow")


def test_every_page_at_both_widths(wide, narrow, studio, tiny_model_dir):
    _deployed(studio, tiny_model_dir)
    job = _completed_job(studio, tiny_model_dir)
    _dataset(studio, "quill.jsonl", GOOD)
    routes = {"overview": "#/", "datasets": "#/datasets", "dataset": "#/datasets/quill.jsonl", "jobs": "#/jobs",
              "job-new": "#/jobs/new", "job-page": f"#/jobs/{job['id']}", "models": "#/models", "endpoints": "#/endpoints",
              "endpoint-page": f"#/endpoints/{EP}", "endpoint-logs": f"#/endpoints/{EP}/logs", "connections": "#/connections",
              "flows": "#/flows", "flow-page": "#/flows/chat-with-endpoint", "playground": f"#/playground?endpoint={EP}",
              "activity": "#/activity", "users": "#/users"}
    for b, tag in ((wide, "wide"), (narrow, "narrow")):
        b.sign_in()
        for name, route in routes.items():
            b.go(route)
            expect(b.page.locator("h1").first).to_be_visible()
            expect(b.page.locator(".page .alert-bad")).to_have_count(0)
            if name == "endpoint-logs":
                expect(b.page.get_by_test_id("deployment-log")).not_to_be_empty()
            b.shot(f"{tag}-{name}")
        # nothing sticks out sideways on a narrow window
        if tag == "narrow":
            for route in routes.values():
                b.go(route)
                width = b.page.evaluate("document.documentElement.scrollWidth")
                assert width <= NARROW["width"], f"{route} is {width}px wide"


def test_cancel_and_resume_from_the_job_page(wide, studio, tiny_model_dir):
    path = _dataset(studio, "quill.jsonl", GOOD)
    r = studio.api("POST", "/jobs", json={"model": str(tiny_model_dir), "training_data": path, "name": "studio-long",
                                          "hyperparameters": {"max_steps": 5000, "logging_steps": 5, "save_steps": 25}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    try:
        wide.sign_in()
        wide.go(f"#/jobs/{job_id}")
        page = wide.page
        status = page.locator(".head-badge")
        expect(status).to_have_text("Running", timeout=120_000)
        expect(page.get_by_test_id("loss-chart").locator("svg .series path")).to_be_attached(timeout=60_000)
        eta = page.locator(".stat", has_text="ETA").locator(".stat-value")
        expect(eta).to_have_text(re.compile(r"\d+[smh]"))
        page.get_by_test_id("cancel-job").click()
        page.locator("dialog").get_by_role("button", name="Cancel job").click()
        expect(status).to_have_text("Canceled", timeout=60_000)
        expect(page.get_by_test_id("cancel-job")).to_have_count(0)
        wide.shot("job-canceled")

        page.get_by_test_id("resume-job").click()
        expect(status).to_have_text(re.compile("Queued|Starting|Running"))
        expect(status).to_have_text("Running", timeout=120_000)
        expect(page.get_by_test_id("job-log")).to_contain_text("resumed from")
    finally:
        studio.api("POST", f"/jobs/{job_id}/cancel")
        _wait_job(studio, job_id, timeout=120)


def test_playground_chats_with_a_chat_flow_keeping_its_history(wide, studio, tiny_model_dir):
    _deployed(studio, tiny_model_dir)
    ep = studio.api("GET", f"/endpoints/{EP}").json()
    key = studio.api("GET", f"/endpoints/{EP}/credentials").json()["primary_key"]
    r = studio.api("PUT", "/connections/forgeflow-endpoint", json={
        "name": "forgeflow-endpoint", "type": "open_ai", "configs": {"base_url": ep["openai_base_url"]},
        "secrets": {"api_key": key}})
    assert r.status_code in (200, 201), r.text
    wide.sign_in()
    page = wide.page
    sent = []
    page.on("request", lambda req: sent.append(req.post_data_json) if req.url.endswith("/api/flows/chat-with-endpoint/test") else None)
    wide.go("#/playground?flow=chat-with-endpoint")
    expect(page.locator(".pg-pane-head")).to_contain_text("chat flow")
    a = page.get_by_test_id("transcript-a")
    for n, question in enumerate(["Who founded Quillfeather Robotics?", "And where?"], start=1):
        page.fill("textarea[name=message]", question)
        page.get_by_role("button", name="Send").click()
        expect(a.locator(".msg.role-assistant .msg-meta")).to_have_count(n, timeout=120_000)
        last = a.locator(".msg.role-assistant").last
        expect(last.locator(".msg-meta")).to_contain_text("flow chat-with-endpoint")
        expect(last).not_to_have_class(re.compile("failed"))
    # the second turn carries the first one as Prompt flow chat history
    first_answer = a.locator(".msg.role-assistant .text").first.text_content()
    assert sent[0]["inputs"] == {"question": "Who founded Quillfeather Robotics?", "chat_history": []}
    assert sent[1]["inputs"]["chat_history"] == [
        {"inputs": {"question": "Who founded Quillfeather Robotics?"}, "outputs": {"answer": first_answer}}]
    assert sent[1]["stream"] is True
    wide.shot("playground-flow")


def test_the_rollout_tab_shows_each_step_and_cancels(wide, studio, tiny_model_dir):
    _deployed(studio, tiny_model_dir)
    r = studio.api("POST", f"/endpoints/{EP}/rollouts", json={
        "deployment": "base", "canary": 20, "min_requests": 100_000, "promote_if": "error_rate<0.01"})
    assert r.status_code == 201, r.text
    wide.sign_in()
    wide.go(f"#/endpoints/{EP}/rollout")
    card = wide.page.get_by_test_id("rollout")
    expect(card.locator("h2")).to_contain_text("Rollout of base")
    expect(card).to_contain_text("base 20%", timeout=30_000)  # the canary's step, once the leader took it
    expect(card).to_contain_text("error_rate<0.01")
    wide.shot("rollout")
    card.get_by_role("button", name="Cancel rollout").click()
    expect(card.locator("h2 .badge")).to_have_text("Canceled", timeout=30_000)
    traffic = studio.api("GET", f"/endpoints/{EP}").json()["traffic"]
    assert {d: p for d, p in traffic.items() if p} == {"blue": 100}
