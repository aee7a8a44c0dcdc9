"""Turn what a user types for a model (a catalog name, a folder, `name:version`) into a folder."""

from __future__ import annotations

from pathlib import Path

from forgeflow.errors import Conflict, NotFound


def resolve_model(ref: str) -> tuple[str, Path]:
    """Return (canonical reference, Hugging Face folder) for a base or registered model."""
    from forgeflow.registry import base_models, models
    from forgeflow.inference.model_folder import hf_model_dir

    candidate = Path(ref).expanduser()
    if candidate.is_dir():
        return str(candidate.resolve()), hf_model_dir(candidate.resolve())
    catalog = {m.name for m in base_models.list_base_models()}
    if ref in catalog:
        return ref, base_models.resolve_base_model(ref)
    try:
        version = models.get_version(ref)
    except NotFound as e:
        if ":" in ref:
            raise
        raise NotFound(f"no model {ref!r}: not a base model ({', '.join(sorted(catalog))}), "
                       "not a registered model and not a folder (see: forgeflow model list)", field="model") from e
    if version.archived:
        raise Conflict(f"model {version.name}:{version.version} is archived; restore it first with: forgeflow model restore "
                       f"--name {version.name} --version {version.version}", field="model")
    return f"{version.name}:{version.version}", hf_model_dir(Path(version.path))
