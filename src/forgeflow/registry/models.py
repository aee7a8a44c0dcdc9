"""The model registry: versioned models in MLflow's registry, wherever the workspace keeps MLflow (`Paths.mlflow_uri`:
SQLite in the home, the store's Postgres database in a schema of its own, or an MLflow server).

A registered version's `source` is a folder in MLflow model format (a job's output) or a
local Hugging Face model folder registered by path. forgeflow's own facts about a version (base
model, source job, resolved hyperparameters, final metrics, archived) are `forgeflow.*` tags. Aliases
(`champion`) are MLflow's registered-model aliases: each names one version of a model, and `NAME@ALIAS` reads
as that version wherever a model reference is taken (a deployment records the version it named then).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.names import check_alias, check_name, parse_model_ref
from forgeflow.store.home import Paths

RESERVED = "forgeflow."
TAG_BASE, TAG_JOB, TAG_HP, TAG_METRICS, TAG_ARCHIVED = (
    "forgeflow.base_model", "forgeflow.source_job", "forgeflow.hyperparameters", "forgeflow.metrics", "forgeflow.archived"
)
# The newest evaluation of the version against its baseline: job id, baseline ref, data, both sides' aggregate
# metrics with their intervals (JSON); the rows stay in the evaluation job's folder and its MLflow run's artifact.
TAG_EVALUATION = "forgeflow.evaluation"


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
    hyperparameters: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    archived: bool = False
    aliases: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    run_id: str | None = None
    created_at: int | None = None
    updated_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@lru_cache(maxsize=4)
def _client(uri: str):
    from mlflow import MlflowClient

    from forgeflow.store.workspace import ensure_mlflow_tables

    ensure_mlflow_tables(uri)  # the first use of MLflow in this process: its tables, made once on Postgres
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def client(mlflow_uri: str | None = None):
    """The MLflow client of the registry at `mlflow_uri` (a worker's, from its job file), by default the
    workspace's."""
    return _client(mlflow_uri or Paths.current().mlflow_uri)


def register(name: str, path: Path, *, base_model: str | None = None, source_job: str | None = None,
             run_id: str | None = None, description: str | None = None, tags: dict[str, str] | None = None,
             hyperparameters: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> ModelVersion:
    """A new version of `name` whose source is `path`; a job's resolved settings and final metrics
    are kept as JSON tags so `model show` tells how the version was trained."""
    check_name(name, "model")
    path = Path(path).resolve()
    if not path.is_dir():
        raise NotFound(f"model folder {path} does not exist", field="path")
    if not ((path / "MLmodel").exists() or (path / "config.json").exists()):
        raise InvalidInput(f"{path} is neither an MLflow model (MLmodel) nor a Hugging Face model folder (config.json)", field="path")
    all_tags = check_user_tags(tags or {})
    c = client()
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # a new version of a model that exists (or was just made)
            raise
    if base_model:
        all_tags[TAG_BASE] = base_model
    if source_job:
        all_tags[TAG_JOB] = source_job
    if hyperparameters:
        all_tags[TAG_HP] = json.dumps(hyperparameters, sort_keys=True)
    if metrics:
        all_tags[TAG_METRICS] = json.dumps(metrics, sort_keys=True)
    mv = c.create_model_version(name, source=str(path), run_id=run_id, tags=all_tags, description=description)
    return _to_version(mv)


def check_user_tags(tags: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in tags.items():
        key = str(key).strip()
        if not key:
            raise InvalidInput("a tag needs a name: use --set-tag key=value", field="tags")
        if key.startswith(RESERVED):
            raise InvalidInput(f"tag {key!r}: names starting with {RESERVED!r} are kept by forgeflow", field="tags")
        out[key] = str(value)
    return out


def _json_tag(tags: dict[str, str], key: str) -> dict[str, Any] | None:
    raw = tags.pop(key, None)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _to_version(mv) -> ModelVersion:
    tags = dict(mv.tags or {})
    return ModelVersion(
        name=mv.name,
        version=str(mv.version),
        path=mv.source,
        base_model=tags.pop(TAG_BASE, None),
        source_job=tags.pop(TAG_JOB, None),
        hyperparameters=_json_tag(tags, TAG_HP),
        metrics=_json_tag(tags, TAG_METRICS),
        archived=tags.pop(TAG_ARCHIVED, "") == "true",
        aliases=sorted(getattr(mv, "aliases", None) or []),
        evaluation=_json_tag(tags, TAG_EVALUATION),
        description=mv.description or None,
        tags=tags,
        run_id=mv.run_id or None,
        created_at=mv.creation_timestamp,
        updated_at=mv.last_updated_timestamp,
    )


def versions_of(name: str, mlflow_uri: str | None = None) -> list[ModelVersion]:
    """Every version of registered model `name` (archived too), oldest first, in the registry at `mlflow_uri` (a
    worker's, from its job file) or by default the workspace's. A search's versions carry no aliases."""
    check_name(name, "model", field="model")
    c = client(mlflow_uri)
    found = [_to_version(mv) for mv in _pages(c.search_model_versions, filter_string=f"name='{name}'")]
    return sorted(found, key=lambda v: int(v.version))


def list_models(*, include_archived: bool = False) -> list[ModelVersion]:
    """Every registered version, oldest first per name, with its aliases; archived ones only when asked."""
    c = client()
    out: list[ModelVersion] = []
    for rm in _pages(c.search_registered_models):
        # a search's versions carry no aliases (MLflow fills them only on a get): the model's own map has them
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in _pages(c.search_model_versions, filter_string=f"name='{rm.name}'"):
            version = _to_version(mv)
            version.aliases = sorted(set(version.aliases) | set(aliases.get(version.version, [])))
            out.append(version)
    out = [v for v in out if include_archived or not v.archived]
    return sorted(out, key=lambda v: (v.name, int(v.version)))


def _pages(search, **kwargs) -> list:
    """Every result of an MLflow search, page after page (a registry search answers at most 100 at a time)."""
    out, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out


def get_version(ref: str) -> ModelVersion:
    """`name:version` (archived or not), `name@alias` (the version carrying it, archived or not) or `name` /
    `name@latest` (latest version not archived) -> that version; NotFound names what exists."""
    return find_version(ref, list_models(include_archived=True))


def find_version(ref: str, listed: list[ModelVersion]) -> ModelVersion:
    """`get_version` among versions already listed (`list_models(include_archived=True)`), so looking up several
    lists the registry once."""
    name, version, alias = parse_model_ref(ref)
    check_name(name, "model", field="model")
    versions = [v for v in listed if v.name == name]
    if not versions:
        raise NotFound(f"no registered model named {name!r} (see: forgeflow model list)", field="model")
    if alias:
        for v in versions:
            if alias in v.aliases:
                return v
        raise NotFound(f"model {name!r} has no alias {alias!r} (its aliases: {_alias_list(versions)}); set it "
                       f"with: forgeflow model update --name {name} --version N --set-alias {alias}", field="model")
    if version is None:
        live = [v for v in versions if not v.archived]
        if not live:
            raise NotFound(f"every version of model {name!r} is archived (restore one with: forgeflow model restore "
                           f"--name {name} --version {versions[-1].version})", field="model")
        return live[-1]
    for v in versions:
        if v.version == version:
            return v
    have = ", ".join(v.version for v in versions)
    raise NotFound(f"model {name!r} has no version {version} (versions: {have})", field="model")


def _alias_list(versions: list[ModelVersion]) -> str:
    return ", ".join(f"{a} -> {v.ref}" for v in versions for a in v.aliases) or "none"


def update_version(ref: str, *, description: str | None = None, set_tags: dict[str, str] | None = None,
                   remove_tags: list[str] | None = None, set_aliases: list[str] | None = None,
                   remove_aliases: list[str] | None = None) -> ModelVersion:
    """Change a version's description, user tags (forgeflow.* tags are not the user's to change) and aliases. An
    alias names one version of a model: setting it on this one moves it here from any other. Everything is checked
    before anything changes."""
    listed = list_models(include_archived=True)
    mv = find_version(ref, listed)
    tags = check_user_tags(set_tags or {})
    removed_tags = list(check_user_tags({k: "" for k in remove_tags or []}))
    for key in removed_tags:
        if key not in mv.tags:
            raise NotFound(f"model {mv.ref} has no tag {key!r} (tags: {', '.join(mv.tags) or 'none'})", field="tags")
    added, removed = _check_alias_changes(mv, [v for v in listed if v.name == mv.name], set_aliases or [],
                                          remove_aliases or [])
    c = client()
    if description is not None:
        c.update_model_version(mv.name, mv.version, description=description)
    for key, value in tags.items():
        c.set_model_version_tag(mv.name, mv.version, key, value)
    for key in removed_tags:
        c.delete_model_version_tag(mv.name, mv.version, key)
    for alias in added:
        c.set_registered_model_alias(mv.name, alias, mv.version)
    for alias in removed:
        c.delete_registered_model_alias(mv.name, alias)
    return get_version(mv.ref)


def _check_alias_changes(mv: ModelVersion, versions: list[ModelVersion], added: list[str],
                         removed: list[str]) -> tuple[list[str], list[str]]:
    """The aliases to set on `mv` and to take off it, checked: valid names, none both set and removed, none set on
    an archived version (a deployment of it would be refused), each removed one carried by `mv`."""
    added = list(dict.fromkeys(check_alias(a.strip()) for a in added))
    removed = list(dict.fromkeys(check_alias(a.strip()) for a in removed))
    both = sorted(set(added) & set(removed))
    if both:
        raise InvalidInput(f"alias {both[0]!r} is both set and removed: give it once", field="alias")
    if added and mv.archived:
        raise Conflict(f"model {mv.ref} is archived, so an alias cannot name it: restore it first (forgeflow model "
                       f"restore --name {mv.name} --version {mv.version}) or set the alias on a live version",
                       field="version")
    for alias in removed:
        if alias not in mv.aliases:
            elsewhere = next((v.ref for v in versions if alias in v.aliases), None)
            where = f"; {alias} names {elsewhere}" if elsewhere else ""
            raise NotFound(f"model {mv.ref} has no alias {alias!r} (its aliases: {', '.join(mv.aliases) or 'none'}"
                           f"{where})", field="alias")
    return added, removed


def set_archived(ref: str, archived: bool) -> ModelVersion:
    """Archive (hide from lists, refuse new deployments) or restore a version."""
    mv = get_version(ref)
    c = client()
    if archived:
        c.set_model_version_tag(mv.name, mv.version, TAG_ARCHIVED, "true")
    elif mv.archived:
        c.delete_model_version_tag(mv.name, mv.version, TAG_ARCHIVED)
    return get_version(mv.ref)


def version_files(ref: str) -> tuple[ModelVersion, list[dict[str, Any]]]:
    """The files of a version's model folder, relative paths and sizes, for download (without the GGUF files the
    llamacpp runtime caches there)."""
    mv = get_version(ref)
    root = Path(mv.path)
    if not root.is_dir():
        raise NotFound(f"model {mv.ref}: its folder {root} is gone", field="model")
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size} for p in model_files(root)]
    return mv, files


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder, without the GGUF files forgeflow caches in it."""
    from forgeflow.inference.gguf_export import is_cache_file

    return [p for p in sorted(Path(folder).rglob("*")) if p.is_file() and not is_cache_file(p.name)]


def version_file(ref: str, relpath: str) -> Path:
    """One file inside a version's folder; paths that leave the folder are refused."""
    mv = get_version(ref)
    root = Path(mv.path).resolve()
    target = (root / relpath).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound(f"model {mv.ref} has no file {relpath!r}", field="path")
    return target
