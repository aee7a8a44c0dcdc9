"""Flow files and inputs that must be refused with a clear error: non-finite numbers, recursive or exploding
YAML aliases, and no docs pages in a served flow."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from forgeflow.errors import InvalidInput
from forgeflow.flows.contract import coerce_value
from forgeflow.flows.loader import load_flow
from forgeflow.flows.serve import create_flow_app
from forgeflow.yamlfile import MAX_ALIAS_VALUES, load_yaml

HALVE_DAG = """
inputs:
  x: {type: double}
outputs:
  half: {reference: "${halve.output}"}
nodes:
- name: halve
  type: python
  source: {type: code, path: halve.py}
  inputs: {x: "${inputs.x}"}
"""
HALVE_PY = """
from promptflow import tool

@tool
def halve(x: float) -> float:
    return x / 2
"""


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "Infinity", "-inf", "1e999"])
def test_a_double_input_refuses_nan_and_infinity(value):
    """issue 10, finding 5: flow inputs typed as numbers took NaN and infinities."""
    with pytest.raises(InvalidInput, match="finite double") as info:
        coerce_value(value, "double", "inputs.x")
    assert info.value.field == "inputs.x"


def test_a_double_input_still_takes_numbers():
    assert [coerce_value(v, "double", "x") for v in (1, 2.5, " 3.5 ", "1e3")] == [1.0, 2.5, 3.5, 1000.0]


def test_a_served_flow_answers_400_for_a_nan_input(make_flow):
    """issue 10, finding 5: `flow serve` passed NaN to the flow, whose answer then could not be sent."""
    with TestClient(create_flow_app(make_flow(HALVE_DAG, {"halve.py": HALVE_PY}))) as c:
        for body in (b'{"x": NaN}', b'{"x": Infinity}', b'{"x": 1e999}'):
            r = c.post("/score", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "finite" in r.json()["message"], (body, r.text)
        assert c.post("/score", json={"x": 3}).json() == {"half": 1.5}


@pytest.mark.parametrize("value", [".nan", ".inf", "1e999"])
def test_a_node_timeout_must_be_finite(make_flow, value):
    """issue 10, finding 5: `timeout: .nan` on a node was accepted (and .inf overflowed the retries count)."""
    dag = HALVE_DAG.replace('inputs: {x: "${inputs.x}"}', f'inputs: {{x: "${{inputs.x}}"}}\n  timeout: {value}')
    with pytest.raises(InvalidInput, match="timeout must be a number >= 0") as info:
        load_flow(make_flow(dag, {"halve.py": HALVE_PY}))
    assert info.value.field == "halve.timeout"
    retries = HALVE_DAG.replace('inputs: {x: "${inputs.x}"}', 'inputs: {x: "${inputs.x}"}\n  retries: .inf')
    with pytest.raises(InvalidInput, match="retries"):
        load_flow(make_flow(retries, {"halve.py": HALVE_PY}, name="retries"))


def test_yaml_aliases_are_counted_as_expanded():
    """issue 10, finding 9a: a few aliases are fine; expanding past the limit, or without end, is refused."""
    assert load_yaml("base: &b {x: 1}\nnode:\n  <<: *b\n  y: 2\nagain: *b\n", "f.yaml") == {
        "base": {"x": 1}, "node": {"x": 1, "y": 2}, "again": {"x": 1}}
    many = "a: &a [" + ", ".join(["1"] * 100) + "]\nb: [" + ", ".join(["*a"] * (MAX_ALIAS_VALUES // 100 + 1)) + "]\n"
    with pytest.raises(InvalidInput, match="aliases") as info:
        load_yaml(many, "many.yaml", field="file")
    assert info.value.field == "file" and info.value.message.startswith("many.yaml: ")
    with pytest.raises(InvalidInput, match="refers to the value that holds it"):
        load_yaml("a: &a [1, *a]\n", "loop.yaml")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_yaml("[" * 5000 + "]" * 5000, "deep.yaml")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_yaml("a: !!python/object/apply:os.system ['true']\n", "code.yaml")


def test_a_served_flow_has_no_pages_from_a_cdn(make_flow):
    """issue 10, finding 9d: `flow serve` also offered /docs and /redoc, which load their scripts from a CDN."""
    with TestClient(create_flow_app(make_flow(HALVE_DAG, {"halve.py": HALVE_PY}))) as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200
