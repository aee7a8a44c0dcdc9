"""`model export`: a registered version as a GGUF file (f16, q8_0, q4_k_m), a plain safetensors checkpoint folder,
or an MLflow model (MLflow's transformers flavor, registry/mlflow_format.py).

The server answers which files of the version's folder make the export, and where each goes under the
client's output folder; the client downloads them through the version's files routes. The one thing the
server makes is a GGUF, cached beside the weights exactly as the `llamacpp` runtime caches it (one file per
type, reused while the weights are unchanged), so the server never writes outside a model's own folder nor
anywhere a request names. A version saved in an older layout, or registered as a bare checkpoint, is
exported to MLflow by the client: it downloads the checkpoint and saves it there (`convert: "mlflow"`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound

FORMATS = ("gguf", "safetensors", "mlflow")


def plan_export(ref: str, fmt: str, quantize: str | None = None) -> dict[str, Any]:
    """What `model export` downloads for version `ref`: {name, version, format, quantize, files: [{path, size,
    target}], total_bytes, convert}; `path` is relative to the version's folder, `target` to the output folder."""
    from forgeflow.inference.gguf_export import DEFAULT_TYPE, GGUF_TYPES, cached_gguf, unsupported_reason
    from forgeflow.inference.model_folder import hf_model_dir, mlmodel_flavors
    from forgeflow.registry.models import get_version, model_files

    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", field="format")
    if quantize is not None and fmt != "gguf":
        raise InvalidInput(f"quantize applies to format gguf only; {fmt} keeps the weights as they are",
                           field="quantize")
    if quantize is not None and quantize not in GGUF_TYPES:
        raise InvalidInput(f"quantize must be one of {', '.join(GGUF_TYPES)}, got {quantize!r}", field="quantize")
    mv = get_version(ref)
    root = Path(mv.path).resolve()
    if not root.is_dir():
        raise NotFound(f"model {mv.ref}: its folder {root} is gone", field="model")
    hf = hf_model_dir(root).resolve()
    convert = None
    if fmt == "gguf":
        quantize = quantize or DEFAULT_TYPE
        if problem := unsupported_reason(json.loads((hf / "config.json").read_text())):
            raise InvalidInput(f"{problem}: export it with format safetensors or mlflow", field="format")
        files = [(cached_gguf(hf, quantize), f"{mv.name}-{mv.version}-{quantize}.gguf")]
    elif fmt == "mlflow" and isinstance((mlmodel_flavors(root) or {}).get("transformers"), dict):
        files = [(p, p.relative_to(root).as_posix()) for p in model_files(root)]
    else:
        files = [(p, p.relative_to(hf).as_posix()) for p in model_files(hf)]
        convert = "mlflow" if fmt == "mlflow" else None
    listing = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "target": target}
               for p, target in files]
    return {"name": mv.name, "version": mv.version, "format": fmt, "quantize": quantize, "files": listing,
            "total_bytes": sum(f["size"] for f in listing), "convert": convert}

