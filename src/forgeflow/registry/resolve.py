"""Turn what a user types for a model (a catalog name, a folder, `name:version`, `name@alias`, or a list of registered
fine-tunes of one base) into a folder (and the fine-tunes' LoRA adapters). An alias is read once, here: what is
deployed from `name@alias` is the `name:version` the alias named then."""

from __future__ import annotations

from pathlib import Path

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.names import client_path, parse_model_ref
from forgeflow.yamlfile import load_yaml


def resolve_model(ref: str, *, allow_archived: bool = False) -> tuple[str, Path]:
    """Return (canonical reference, Hugging Face folder) for a base or registered model. An archived version is a
    Conflict (it is deployed no more) unless `allow_archived`: what only reads the version (an evaluation) may."""
    from forgeflow.registry import base_models, models
    from forgeflow.inference.model_folder import hf_model_dir

    candidate = client_path(ref, "model")
    if candidate.is_dir():
        return str(candidate), hf_model_dir(candidate)
    catalog = {m.name for m in base_models.list_base_models()}
    if ref in catalog:
        return ref, base_models.resolve_base_model(ref)
    try:
        version = models.get_version(ref)
    except NotFound as e:
        if ":" in ref or "@" in ref:
            raise
        raise NotFound(f"no model {ref!r}: not a base model ({', '.join(sorted(catalog))}), "
                       "not a registered model and not a folder (see: forgeflow model list)", field="model") from e
    if not allow_archived:
        _refuse_archived(version, ref)
    return version.ref, hf_model_dir(Path(version.path))


def resolve_models(model: str | list[str]) -> tuple[str, Path, dict[str, str]]:
    """A deployment's `model` as (model reference, model folder, adapters). One reference is `resolve_model`'s,
    with no adapters. A list names registered fine-tunes of one base model, served as LoRA adapters beside it: the
    reference and folder are then the base model's, and adapters maps each `NAME:VERSION` to its adapter folder.
    A version with no LoRA adapter (a full fine-tune) or on another base than the first is a 400 naming `model`."""
    if isinstance(model, str):
        ref, path = resolve_model(model)
        return ref, path, {}
    from forgeflow.registry import models

    adapters: dict[str, str] = {}
    base: tuple[str, Path] | None = None
    listed = models.list_models(include_archived=True)
    for given in model:
        version = _live_version(given, listed)
        if version.ref in adapters:
            raise InvalidInput(f"model lists {version.ref} twice ({given!r} names it too)", field="model")
        adapter = version_adapter(Path(version.path))
        if adapter is None:
            raise InvalidInput(f"model {version.ref} has no LoRA adapter (its folder has no adapter/"
                               "adapter_config.json), so it cannot share a base model with others: deploy it alone "
                               f"(--model {version.ref}), or list only LoRA fine-tunes", field="model")
        name = version.base_model or _metadata_base(Path(version.path))
        if not name:
            raise InvalidInput(f"model {version.ref} does not record its base model, so forgeflow cannot load the "
                               f"base its adapter belongs to: deploy it alone (--model {version.ref})", field="model")
        folder = _base_folder(name, version.ref)
        if base is None:
            base = (name, folder)
        elif folder != base[1]:
            raise InvalidInput(f"the models listed do not share one base model: {version.ref} is a fine-tune of "
                               f"{name}, {next(iter(adapters))} of {base[0]}; one deployment serves fine-tunes of "
                               "one base (deploy the others on another deployment)", field="model")
        adapters[version.ref] = str(adapter)
    if base is None:
        raise InvalidInput("model is an empty list: name a model, or the registered fine-tunes of one base model",
                           field="model")
    return base[0], base[1], adapters


def version_adapter(folder: Path) -> Path | None:
    """The LoRA adapter a registered model folder keeps beside its merged weights (`adapter/`), if any."""
    adapter = Path(folder) / "adapter"
    return adapter.resolve() if (adapter / "adapter_config.json").is_file() else None


def _live_version(ref: str, listed: list):
    from forgeflow.registry import models

    version = models.find_version(ref, listed)
    _refuse_archived(version, ref)
    return version


def _refuse_archived(version, given: str) -> None:
    """An archived version is deployed no more (running deployments keep it); an alias still naming one says so."""
    if not version.archived:
        return
    how = f"restore it first with: forgeflow model restore --name {version.name} --version {version.version}"
    alias = parse_model_ref(given).alias
    if alias:
        how += f", or move the alias: forgeflow model update --name {version.name} --version N --set-alias {alias}"
        raise Conflict(f"model {given.strip()} names {version.ref}, which is archived; {how}", field="model")
    raise Conflict(f"model {version.ref} is archived; {how}", field="model")


def _metadata_base(folder: Path) -> str | None:
    """The base model an MLflow model folder's `metadata` names (forgeflow writes it when it saves a fine-tune)."""
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        return None
    spec = load_yaml(mlmodel.read_text(), str(mlmodel)) or {}
    metadata = spec.get("metadata") if isinstance(spec, dict) else None
    base = metadata.get("base_model") if isinstance(metadata, dict) else None
    return base if isinstance(base, str) and base else None


def _base_folder(name: str, ref: str) -> Path:
    from forgeflow.registry import base_models

    try:
        return base_models.resolve_base_model(name).resolve()
    except NotFound as e:
        raise NotFound(f"model {ref}: its base model cannot be loaded: {e.message}", field="model") from e
