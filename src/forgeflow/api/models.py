"""Base models (the catalog) and registered models (the MLflow registry)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from forgeflow.api.security import CONTRIBUTOR, READER, audit_target, services
from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.names import client_path

router = APIRouter(tags=["models"])
log = logging.getLogger("forgeflow.api")


class PullBody(BaseModel):
    name: str = Field(description="Catalog name, e.g. smollm2-135m-instruct.")
    force: bool = Field(False, description="Import again even when present.")


class UpdateBody(BaseModel, extra="forbid"):
    description: str | None = Field(None, description="New description (unchanged when absent).")
    set_tags: dict[str, str] = Field(default_factory=dict, description="Tags to add or change.")
    remove_tags: list[str] = Field(default_factory=list, description="Tags to remove.")
    set_aliases: list[str] = Field(default_factory=list, description="Aliases to put on this version (an alias "
                                   "names one version of the model: one on another version moves here).")
    remove_aliases: list[str] = Field(default_factory=list, description="Aliases to take off this version.")


class RegisterBody(BaseModel):
    name: str = Field(description="Registered model name.")
    from_job: str | None = Field(None, description="A Completed fine-tuning job whose output to register.")
    path: str | None = Field(None, description="A local Hugging Face or MLflow model folder to register.")
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


def _base_view(info) -> dict:
    d = info.to_dict()
    d["kind"] = "base"
    return d


@router.get("/models", dependencies=READER)
def list_models(include_archived: bool = False) -> list[dict]:
    from forgeflow.registry import base_models, models

    return [_base_view(b) for b in base_models.list_base_models()] + [
        v.to_dict() for v in models.list_models(include_archived=include_archived)]


@router.post("/models/pull", dependencies=CONTRIBUTOR)
def pull(body: PullBody, request: Request) -> dict:
    from forgeflow.registry import base_models

    audit_target(request, body.name)
    return _base_view(base_models.pull_base_model(body.name, force=body.force))


@router.post("/models", status_code=201, dependencies=CONTRIBUTOR)
def register(body: RegisterBody, request: Request, ff=Depends(services)) -> dict:
    from forgeflow.registry import models

    audit_target(request, body.name)
    if bool(body.from_job) == bool(body.path):
        raise InvalidInput("give exactly one of from_job or path", field="from_job")
    if body.from_job:
        job = ff.runner.get(body.from_job)
        mv = models.register(body.name, job.output_model(), base_model=job.base_model, source_job=job.id,
                             run_id=job.mlflow_run_id, description=body.description, tags=body.tags,
                             hyperparameters=job.hyperparameters, metrics=job.metrics)
        try:
            if ff.runner.carry_evaluation(job, mv.ref):  # evaluate_against_base: the evidence goes with the version
                mv = models.get_version(mv.ref)
        except Exception as exc:  # the version exists: a failure to tag it never undoes the registration
            message = exc.message if isinstance(exc, ForgeflowError) else repr(exc)
            log.warning("model %s registered, but the evaluation of job %s could not be recorded on it: %s",
                        mv.ref, job.id, message)
        return mv.to_dict()
    return models.register(body.name, client_path(body.path, "path"), description=body.description,
                           tags=body.tags).to_dict()


@router.get("/models/{name}", dependencies=READER)
def show(name: str, version: str | None = None) -> dict:
    """A base model, or a registered version: `name` alone (its newest live version), `name@alias` (the version
    the alias names), or `name` with `version`."""
    from forgeflow.registry import base_models, models

    for info in base_models.list_base_models():
        if info.name == name and version is None:
            return _base_view(info)
    if version is not None and "@" in name:
        raise InvalidInput(f"{name!r} names a version by its alias: leave out version, or name the model alone",
                           field="version")
    return models.get_version(f"{name}:{version}" if version else name).to_dict()


def _ref(name: str, version: str) -> str:
    return f"{name}:{version}"


@router.patch("/models/{name}/versions/{version}", dependencies=CONTRIBUTOR)
def update(name: str, version: str, body: UpdateBody) -> dict:
    from forgeflow.registry import models

    return models.update_version(_ref(name, version), description=body.description, set_tags=body.set_tags,
                                 remove_tags=body.remove_tags, set_aliases=body.set_aliases,
                                 remove_aliases=body.remove_aliases).to_dict()


@router.post("/models/{name}/versions/{version}/archive", dependencies=CONTRIBUTOR)
def archive(name: str, version: str) -> dict:
    """Hide a version from lists and refuse new deployments of it; existing ones keep running."""
    from forgeflow.registry import models

    return models.set_archived(_ref(name, version), True).to_dict()


@router.post("/models/{name}/versions/{version}/restore", dependencies=CONTRIBUTOR)
def restore(name: str, version: str) -> dict:
    from forgeflow.registry import models

    return models.set_archived(_ref(name, version), False).to_dict()


@router.get("/models/{name}/versions/{version}/files", dependencies=READER)
def files(name: str, version: str) -> dict:
    """The files of a version's model folder (relative path and size), for `model download`."""
    from forgeflow.registry import models

    mv, listing = models.version_files(_ref(name, version))
    return {"name": mv.name, "version": mv.version, "files": listing, "total_bytes": sum(f["size"] for f in listing)}


@router.get("/models/{name}/versions/{version}/files/{path:path}", dependencies=READER)
def file(name: str, version: str, path: str) -> FileResponse:
    from forgeflow.registry import models

    return FileResponse(models.version_file(_ref(name, version), path), media_type="application/octet-stream")


@router.get("/models/{name}/versions/{version}/export", dependencies=READER)
def export(
    name: str, version: str, request: Request,
    format: str = Query(description="gguf, safetensors (a Hugging Face checkpoint folder) or mlflow (MLflow's "
                                    "transformers flavor, loadable without forgeflow)."),
    quantize: str | None = Query(None, description="GGUF weights: f16, q8_0 or q4_k_m (the default; needs "
                                                   "llama-cpp-python on the server). Only with format gguf."),
) -> dict:
    """Which of the version's files make an export in `format`, each with its path under the client's output folder.
    A read: the GGUF it lists is made on first use and cached beside the weights (one file per type, as the
    llamacpp runtime caches it); the client downloads the files with the route above."""
    from forgeflow.registry.export import plan_export

    for key in request.query_params:
        if key not in ("format", "quantize"):
            raise InvalidInput(f"unknown parameter {key!r}: an export takes format and quantize", field=key)
    return plan_export(_ref(name, version), format, quantize)
