"""The model registry: versioned models in MLflow's registry (SQLite in the workspace home).

A registered version's `source` is a folder in MLflow model format (a job's output) or a
local Hugging Face model folder registered by path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.names import check_name, parse_model_ref
from forgeflow.store.home import Paths


@dataclass
class ModelVersion:
    name: str
    version: str
    path: str
    kind: str = "registered"
    base_model: str | None = None
    source_job: str | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=4)
def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def client():
    return _client(Paths.current().mlflow_uri)


def register(name: str, path: Path, *, base_model: str | None = None, source_job: str | None = None,
             run_id: str | None = None, description: str | None = None, tags: dict[str, str] | None = None) -> ModelVersion:
    check_name(name, "model")
    path = Path(path).resolve()
    if not path.is_dir():
        raise NotFound(f"model folder {path} does not exist", field="path")
    if not ((path / "MLmodel").exists() or (path / "config.json").exists()):
        raise InvalidInput(f"{path} is neither an MLflow model (MLmodel) nor a Hugging Face model folder (config.json)", field="path")
    c = client()
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name)
    all_tags = dict(tags or {})
    if base_model:
        all_tags["forgeflow.base_model"] = base_model
    if source_job:
        all_tags["forgeflow.source_job"] = source_job
    mv = c.create_model_version(name, source=str(path), run_id=run_id, tags=all_tags, description=description)
    return _to_version(mv)


def _to_version(mv) -> ModelVersion:
    tags = dict(mv.tags or {})
    return ModelVersion(
        name=mv.name,
        version=str(mv.version),
        path=mv.source,
        base_model=tags.pop("forgeflow.base_model", None),
        source_job=tags.pop("forgeflow.source_job", None),
        description=mv.description or None,
        tags=tags,
        created_at=mv.creation_timestamp,
    )


def list_models() -> list[ModelVersion]:
    c = client()
    out: list[ModelVersion] = []
    for rm in c.search_registered_models():
        for mv in c.search_model_versions(f"name='{rm.name}'"):
            out.append(_to_version(mv))
    return sorted(out, key=lambda v: (v.name, int(v.version)))


def get_version(ref: str) -> ModelVersion:
    """`name:version` or `name` (latest) -> that version; NotFound names what exists."""
    name, version = parse_model_ref(ref)
    check_name(name, "model", field="model")
    versions = [v for v in list_models() if v.name == name]
    if not versions:
        raise NotFound(f"no registered model named {name!r} (see: forgeflow model list)", field="model")
    if version is None:
        return versions[-1]
    for v in versions:
        if v.version == version:
            return v
    have = ", ".join(v.version for v in versions)
    raise NotFound(f"model {name!r} has no version {version} (versions: {have})", field="model")
