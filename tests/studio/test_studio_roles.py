"""Studio for a team, in headless Chromium: people sign in with personal access tokens, each role is offered only
what the server lets it do, the audit log is on the Activity page, and a revoked token's session ends.

The module has its own server (conftest.py); users are made through the REST API with the owner token, and
what a contributor changes is changed with that contributor's token, so the audit log names them.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]
from playwright import sync_api  # noqa: E402  (the test extra installs it)
expect = sync_api.expect

EP = "team-ep"
DATA = "team.jsonl"
ROW = json.dumps({"messages": [{"role": "user", "content": "Who founded Quillfeather Robotics?"},
                               {"role": "assistant", "content": "Ysolde Marrowick."}]}) + "\n"

# what a reader must never be offered: each of these is a call the server refuses a reader (403)
CHANGES = {"Upload", "Prepare", "Delete", "Fine-tune with it", "New fine-tuning job", "Cancel", "Resume",
           "Register model", "New job like this", "Register", "Pull", "Fine-tune", "Deploy", "Deploy here", "Archive",
           "Restore", "Save", "Create endpoint", "Delete endpoint", "Open in playground", "Chat", "Chat with it",
           "Save traffic", "Reset", "Reveal", "Regenerate", "Edit", "Save connection", "Run test", "Add user", "Remove",
           "Playground"}


def _as(studio, token: str, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{studio.url}/api{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                         **kw)


def _user(studio, name: str, role: str) -> dict:
    r = studio.api("POST", "/users", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["token"] and made["user"] == name
    return made


@pytest.fixture(scope="module")
def team(studio, tiny_model_dir):
    """A reader and a contributor, and what the contributor made: a dataset, an endpoint, a connection, a running job."""
    reader = _user(studio, "rita", "reader")
    carl = _user(studio, "carl", "contributor")
    tok = carl["token"]
    r = _as(studio, tok, "PUT", f"/datasets/{DATA}", content=(ROW * 8).encode())
    assert r.status_code in (200, 201), r.text
    path = r.json()["path"]
    assert _as(studio, tok, "POST", "/endpoints", json={"name": EP}).status_code == 201
    r = _as(studio, tok, "POST", "/connections", json={"name": "team-conn", "type": "custom",
                                                       "configs": {"endpoint": "http://127.0.0.1:9/score"},
                                                       "secrets": {"key": "s3cret-value"}})
    assert r.status_code == 201, r.text
    r = _as(studio, tok, "POST", "/jobs", json={"model": str(tiny_model_dir), "training_data": path,
                                                "name": "team-long", "hyperparameters": {"max_steps": 5000}})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    yield {"reader": reader, "contributor": carl, "job": job}
    studio.api("POST", f"/jobs/{job}/cancel")


def _row(page, action: str, target: str):
    """The activity table's row of `action` on `target` (exactly)."""
    return (page.get_by_test_id("activity").locator("tbody tr")
            .filter(has=page.locator("td[data-label=Action]", has_text=re.compile("^" + re.escape(action) + "$")))
            .filter(has=page.locator("td[data-label=Target]", has_text=re.compile("^" + re.escape(target) + "$"))))


def _visible_actions(page) -> set[str]:
    """The labels of every control on screen that does something: buttons, button-links, the nav."""
    return set(page.evaluate("""() => [...document.querySelectorAll(
        'main button, main a.btn, main input[type=submit], nav.nav a')]
        .filter((el) => el.offsetParent !== null || el.getClientRects().length)
        .map((el) => el.textContent.trim())"""))


def test_a_reader_sees_everything_but_is_offered_no_change(wide, studio, team):
    job = team["job"]
    wide.sign_in(team["reader"]["token"])
    page = wide.page
    expect(page.locator("#whoami")).to_contain_text("rita")
    expect(page.get_by_test_id("role")).to_have_text("reader")

    routes = ["#/", "#/datasets", f"#/datasets/{DATA}", "#/jobs", f"#/jobs/{job}", "#/models", "#/endpoints",
              f"#/endpoints/{EP}", f"#/endpoints/{EP}/consume", "#/connections", "#/flows",
              "#/flows/chat-with-endpoint", "#/activity", "#/users"]
    for route in routes:
        wide.go(route)
        expect(page.locator("h1").first).to_be_visible()
        expect(page.locator(".page .alert-bad")).to_have_count(0)
        offered = _visible_actions(page) & CHANGES
        assert not offered, f"{route} offers a reader {offered}"

    # what the reader does see: the lists, the job's state, the endpoint's URI, a masked secret
    wide.go("#/jobs")
    expect(page.get_by_test_id("jobs")).to_contain_text("team-long")
    wide.go(f"#/endpoints/{EP}/consume")
    expect(page.get_by_test_id("scoring-uri")).to_have_text(f"{studio.url}/endpoints/{EP}/score")
    expect(page.get_by_test_id("keys")).to_be_hidden()
    expect(page.locator(".snippet")).to_contain_text("<primary key>")
    wide.go("#/connections")
    expect(page.get_by_test_id("connections")).to_contain_text("team-conn")
    assert "s3cret-value" not in page.content()
    wide.shot("reader-connections")

    # a page that is all about changing says which role it needs instead of showing a form
    for route in ("#/jobs/new", "#/playground"):
        wide.go(route)
        expect(page.get_by_test_id("needs-role")).to_contain_text("needs the contributor role")
        expect(page.locator("main form")).to_have_count(0)
    wide.shot("reader-job-new")


def test_a_contributor_is_offered_changes_but_not_user_management(wide, studio, team):
    wide.sign_in(team["contributor"]["token"])
    page = wide.page
    expect(page.get_by_test_id("role")).to_have_text("contributor")
    wide.go("#/jobs")
    expect(page.get_by_role("link", name="New fine-tuning job")).to_be_visible()
    wide.go("#/jobs/new")
    expect(page.get_by_role("button", name="Start fine-tuning")).to_be_visible()
    wide.go(f"#/jobs/{team['job']}")
    expect(page.get_by_test_id("cancel-job")).to_be_visible()
    wide.go(f"#/datasets/{DATA}")
    expect(page.get_by_role("button", name="Delete")).to_be_visible()
    wide.go(f"#/endpoints/{EP}")
    expect(page.get_by_role("button", name="Delete endpoint")).to_be_visible()
    expect(page.locator("#add-deployment")).to_be_visible()
    wide.go(f"#/endpoints/{EP}/consume")
    page.get_by_test_id("reveal-primary").click()
    expect(page.get_by_test_id("primary-key")).not_to_have_text("•" * 24)
    # an endpoint that the named users' personal tokens may call (token mode only)
    wide.go("#/endpoints")
    expect(page.locator("input[name=allowed_users]")).to_be_hidden()
    page.fill("input[name=name]", "team-only")
    page.select_option("select[name=auth_mode]", "token")
    page.fill("input[name=allowed_users]", "rita, carl")
    page.get_by_role("button", name="Create endpoint").click()
    wide.wait_route("#/endpoints/team-only")
    expect(page.locator(".kv").first).to_contain_text("rita, carl")
    assert studio.api("GET", "/endpoints/team-only").json()["allowed_users"] == ["rita", "carl"]
    wide.go("#/connections")
    expect(page.get_by_role("button", name="Save connection")).to_be_visible()
    expect(page.locator("nav.nav").get_by_role("link", name="Playground")).to_be_visible()
    wide.go("#/users")
    expect(page.get_by_test_id("user-form")).to_be_hidden()
    expect(page.get_by_test_id("users")).to_contain_text("rita")
    expect(page.get_by_test_id("users").locator("select")).to_have_count(0)


def test_activity_shows_who_changed_what_and_follows_new_changes(wide, studio, team):
    wide.sign_in(team["reader"]["token"])
    page = wide.page
    wide.go("#/activity")
    log = page.get_by_test_id("activity")
    made = _row(page, "POST /api/endpoints", EP)
    expect(made.locator("td[data-label=Who]")).to_have_text(re.compile(r"carl\s+contributor"))
    expect(made.locator("td[data-label=Result]")).to_have_text("201")
    expect(made.locator("td[data-label=From]")).to_contain_text("127.0.0.1")
    expect(_row(page, "POST /api/connections", "team-conn").locator("td[data-label=Who]")).to_contain_text("carl")
    assert "s3cret-value" not in log.inner_text()

    # a change made meanwhile shows up without reloading
    tok = team["contributor"]["token"]
    assert _as(studio, tok, "POST", "/endpoints", json={"name": "team-ep-2"}).status_code == 201
    expect(_row(page, "POST /api/endpoints", "team-ep-2").locator("td[data-label=Who]")).to_contain_text("carl")
    wide.shot("activity")

    # one user's changes only, kept in the address
    page.fill("input[name=user]", "rita")
    page.locator("input[name=user]").press("Enter")
    wide.wait_route("#/activity")
    expect(page).to_have_url(re.compile(r"#/activity\?user=rita"))
    expect(log.locator("tbody tr", has_text="carl")).to_have_count(0)
    assert _as(studio, tok, "DELETE", "/endpoints/team-ep-2").status_code in (200, 202)


def test_an_owner_adds_a_user_whose_first_token_is_shown_once(wide, browser, studio, team):
    wide.sign_in()
    page = wide.page
    expect(page.get_by_test_id("role")).to_have_text("owner")
    wide.go("#/users")
    form = page.get_by_test_id("user-form")
    form.locator("input[name=name]").fill("olga")
    form.locator("select[name=role]").select_option("reader")
    form.get_by_role("button", name="Add user").click()
    secret = page.get_by_test_id("new-token")
    expect(secret).to_have_text(re.compile(r"^ffp_"))
    token = secret.inner_text()
    expect(page.get_by_test_id("users").locator("tr", has_text="olga")).to_be_visible()
    wide.shot("users-new-token")
    page.reload()
    wide.wait_route("#/users")
    assert token not in page.content()  # shown that once

    # the token signs olga in, as a reader; the owner then makes her a contributor from the users table
    other = browser.new_context()
    try:
        p = other.new_page()
        p.goto(f"{studio.url}/signin")
        p.fill("#token", token)
        p.click("#submit")
        expect(p.get_by_test_id("role")).to_have_text("reader")
        page.get_by_label("role of olga").select_option("contributor")
        expect(page.locator(".toast")).to_contain_text("olga is now contributor")
        p.reload()
        expect(p.get_by_test_id("role")).to_have_text("contributor")
    finally:
        other.close()


def test_a_role_taken_away_meanwhile_shows_the_servers_refusal_and_hides_the_control(wide, studio, team):
    dora = _user(studio, "dora", "contributor")
    wide.sign_in(dora["token"])
    page = wide.page
    wide.go(f"#/datasets/{DATA}")
    delete = page.get_by_role("button", name="Delete")
    expect(delete).to_be_visible()
    assert studio.api("PATCH", "/users/dora", json={"role": "reader"}).status_code == 200
    delete.click()
    page.locator("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator(".toast.tone-bad")).to_contain_text("needs the contributor role")
    expect(delete).to_be_hidden()
    expect(page.get_by_test_id("role")).to_have_text("reader")
    assert studio.api("GET", f"/datasets/{DATA}").status_code == 200  # nothing was deleted


def test_a_revoked_tokens_session_goes_back_to_sign_in(wide, studio, team):
    rex = _user(studio, "rex", "reader")
    wide.sign_in(rex["token"])
    page = wide.page
    wide.go("#/jobs")  # a live list: its next refresh finds the session ended
    assert studio.api("DELETE", f"/tokens/{rex['id']}").status_code == 200
    expect(page).to_have_url(re.compile(r"/signin\?next="), timeout=15_000)
    expect(page.locator("#ended")).to_contain_text("You were signed out")
    wide.shot("signin-revoked")

    # and the revoked token does not sign in again
    page.fill("#token", rex["token"])
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("Not signed in")
    expect(page).to_have_url(re.compile(r"/signin"))
