from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.flows.connection_yaml import load_connection_yaml


def write(tmp_path, text: str):
    path = tmp_path / "conn.yaml"
    path.write_text(text)
    return path


def test_custom_connection(tmp_path):
    path = write(
        tmp_path,
        "$schema: https://azuremlschemas.azureedge.net/promptflow/latest/CustomConnection.schema.json\n"
        "name: custom-phi3\ntype: custom\nconfigs:\n  endpoint: http://h/score\n  retries: 3\n"
        "secrets:\n  key: ${env:PHI3_KEY}\n",
    )
    assert load_connection_yaml(path) == {
        "name": "custom-phi3",
        "type": "custom",
        "configs": {"endpoint": "http://h/score", "retries": "3"},
        "secrets": {"key": "${env:PHI3_KEY}"},
    }


def test_open_ai_style_connections(tmp_path):
    path = write(tmp_path, "name: aoai\ntype: azure_open_ai\napi_key: sk-1\napi_base: https://x\napi_type: azure\n")
    conn = load_connection_yaml(path)
    assert conn["secrets"] == {"api_key": "sk-1"}
    assert conn["configs"] == {"api_base": "https://x", "api_type": "azure"}
    assert load_connection_yaml(write(tmp_path, "name: oa\ntype: open_ai\napi_key: k\n"))["type"] == "open_ai"


@pytest.mark.parametrize(
    "text, field",
    [
        ("name: 'bad name!'\ntype: custom\nsecrets: {k: v}\n", "name"),
        ("type: custom\nsecrets: {k: v}\n", "name"),
        ("name: c\ntype: nosuch\nsecrets: {k: v}\n", "type"),
        ("name: c\ntype: custom\nconfigs: {a: b}\n", "secrets"),
        ("name: c\ntype: custom\nconfigs: [a]\nsecrets: {k: v}\n", "configs"),
        ("name: c\ntype: custom\nsecrets: {k: {nested: 1}}\n", "k"),
        ("name: c\ntype: open_ai\n", "api_key"),
    ],
)
def test_errors_name_field_and_file(tmp_path, text, field):
    path = write(tmp_path, text)
    with pytest.raises(InvalidInput) as info:
        load_connection_yaml(path)
    assert info.value.field == field and str(path) in info.value.message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(NotFound, match="nope.yaml"):
        load_connection_yaml(tmp_path / "nope.yaml")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_connection_yaml(write(tmp_path, "name: [unclosed\n"))
