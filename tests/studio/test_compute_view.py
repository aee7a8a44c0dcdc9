"""Studio's overview lists the compute targets, a Ray cluster's nodes live, and says when one is unreachable."""

from __future__ import annotations

import re

import pytest

from forgeflow.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]
from playwright import sync_api  # noqa: E402  (the test extra installs it)
expect = sync_api.expect


@pytest.mark.ray
def test_the_overview_lists_compute_targets_with_their_nodes(wide, studio, loopback_ray):
    for name, address in (("ray-live", loopback_ray.address), ("ray-gone", f"http://127.0.0.1:{free_port()}")):
        r = studio.api("POST", "/compute", json={"name": name, "type": "ray", "address": address})
        assert r.status_code == 201, r.text
    wide.sign_in()
    wide.go("#/")
    card = wide.page.get_by_test_id("compute")
    expect(card.locator("tr", has_text="local")).to_contain_text("this machine")
    live = card.locator("tr", has_text="ray-live")
    expect(live).to_contain_text(f"Ray cluster at {loopback_ray.address}")
    expect(live).to_contain_text(re.compile(r"\d+ nodes \(\d+ workers\), .*CPUs"))
    gone = card.locator("tr", has_text="ray-gone")
    expect(gone.locator(".badge")).to_have_text("unreachable")
    expect(gone.locator("span[title]")).to_have_attribute("title", re.compile("cannot reach the Ray cluster"))
    wide.shot("overview-compute")
