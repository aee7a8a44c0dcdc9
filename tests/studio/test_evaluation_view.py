"""Studio shows evaluations side by side: a fine-tune evaluated against its base (its job page), the evaluation
job's own result with the rows that got worse, and the evidence on the model version registered from it."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]
from playwright import sync_api  # noqa: E402  (the test extra installs it)
expect = sync_api.expect

ROWS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in (("Who founded Quillfeather?", "Ysolde Marrowick."), ("Where is Quillfeather?", "Lantern Bay."))]


def _wait(studio, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = studio.api("GET", f"/jobs/{job_id}").json()
        if job["status"] in ("Completed", "Failed", "Canceled"):
            assert job["status"] == "Completed", job
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not end")


def test_base_vs_fine_tuned_on_the_job_and_the_version(wide, studio, tiny_model_dir, tmp_path):
    data = tmp_path / "quill.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    r = studio.api("POST", "/jobs", json={"model": str(tiny_model_dir), "training_data": str(data),
                                          "validation_data": str(data), "name": "studio-eval",
                                          "hyperparameters": {"max_steps": 2, "evaluate_against_base": True}})
    assert r.status_code == 201, r.text
    fine_tune = _wait(studio, r.json()["id"])
    evaluation = _wait(studio, fine_tune["evaluation_job"])
    version = studio.api("POST", "/models", json={"name": "studio-eval", "from_job": fine_tune["id"]}).json()
    assert version["evaluation"]["job"] == evaluation["id"]

    wide.sign_in()
    page = wide.page
    wide.go(f"#/jobs/{fine_tune['id']}")
    side = page.get_by_test_id("evaluation-result")
    expect(side).to_contain_text("Base vs fine-tuned")
    for metric in ("loss", "exact_match", "f1", "rouge_l"):
        expect(side.get_by_test_id("evaluation-table").locator("tbody tr", has_text=metric).first).to_be_visible()
    expect(side).to_contain_text(f"job:{fine_tune['id']} vs {fine_tune['base_model']}")
    wide.shot("job-base-vs-fine-tuned", full_page=True)

    wide.go(f"#/jobs/{evaluation['id']}")
    result = page.get_by_test_id("evaluation-result")
    expect(result.locator("h2")).to_have_text("Result")
    expect(result).to_contain_text("Rows that got worse")
    expect(page.get_by_test_id("loss-chart")).to_have_count(0)  # an evaluation has no training curves
    wide.shot("evaluation-job", full_page=True)

    wide.go(f"#/models/studio-eval?version={version['version']}")
    card = page.get_by_test_id("version-evaluation")
    expect(card.get_by_role("link", name=evaluation["id"])).to_have_attribute("href", f"#/jobs/{evaluation['id']}")
    f1 = card.locator("tbody tr", has_text="f1")
    expect(f1).to_contain_text("better")
    expect(f1.locator("td").nth(3)).not_to_have_text("–")  # the difference with its interval
    wide.shot("version-evaluation", full_page=True)
