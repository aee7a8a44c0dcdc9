"""Revision 0010 (several fine-tunes on one deployment, the GGUF type) upgrades a store at 0009 in place: a
deployment stored before reads as the one model it was, on llamacpp of the f16 weights it was served."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from forgeflow.inference.model_server import _parse_args
from forgeflow.serving.placement import instance_command
from forgeflow.serving.records import Deployment
from forgeflow.store import migrate
from forgeflow.store.db import Store


def test_a_deployment_stored_at_0009_reads_as_one_model_after_the_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    config = migrate._config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0009_endpoint_ports")
        conn.execute(sa.text(
            "INSERT INTO deployments (endpoint, name, model_ref, model_path, runtime, instance_count, "
            "request_settings, state, error, created_at) VALUES ('ep', 'blue', 'tiny-chat:1', '/m/tiny', "
            "'llamacpp', 1, '{\"request_timeout_ms\": 90000}', 'Succeeded', NULL, '2026-01-01T00:00:00+00:00')"))
    assert migrate.current_revision(engine) == "0009_endpoint_ports"
    assert migrate.upgrade(engine)[0] == "0010_deployment_adapters"  # and any later revisions
    engine.dispose()

    store = Store(url)  # opening it finds it up to date
    dep = Deployment.from_row(store.get("deployments", endpoint="ep", name="blue"))
    # llamacpp served f16 then, and still does: the model server's default, now named
    assert (dep.model_ref, dep.models, dep.adapters, dep.gguf_type) == ("tiny-chat:1", ["tiny-chat:1"], {}, "f16")
    argv = instance_command(dep, 9000)
    assert argv[argv.index("--gguf-type") + 1] == _parse_args(["--model-dir", "/m", "--port", "0"]).gguf_type

    # the new columns take what a deployment of several fine-tunes stores
    adapters = {"tuned-a:1": "/m/a/adapter", "tuned-b:3": "/m/b/adapter"}
    store.update("deployments", {"endpoint": "ep", "name": "blue"}, {"adapters": adapters, "gguf_type": "q8_0"})
    dep = Deployment.from_row(store.get("deployments", endpoint="ep", name="blue"))
    assert dep.adapters == adapters and list(dep.adapters) == ["tuned-a:1", "tuned-b:3"] and dep.gguf_type == "q8_0"
