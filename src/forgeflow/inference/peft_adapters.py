"""LoRA adapters beside one base model in the `transformers` runtime, through PEFT.

The base is loaded once; the first adapter used wraps it in a PeftModel, later ones load into that wrapper,
and the least recently used one not in use is deleted past the limit (inference/adapters.py LoadedAdapters).
One forward serves rows of different adapters: batched LoRA (inference/batched_lora.py) adds each row's
adapter delta in one gather and two batched matmuls per layer; with `batched=False`, PEFT's own mixed-batch
forward (`adapter_names`, BASE for none) does, looping over the adapters in every layer. Loading and deleting
happen only on the batch scheduler's thread, between forwards, so no adapter goes away under a forward that
uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput
from forgeflow.inference.adapters import DEFAULT_MAX_LOADED, AdapterCatalog, LoadedAdapters
from forgeflow.inference.batched_lora import BatchedLora

BASE = "__base__"  # PEFT's name for a row that runs without an adapter


class PeftAdapters:
    """The adapters an instance serves, loaded on demand beside the base model, and the forward that mixes
    them."""

    def __init__(self, base: Any, adapters: dict[str, Path], *, max_loaded: int = DEFAULT_MAX_LOADED,
                 batched: bool = True) -> None:
        self.base = base
        self.catalog = AdapterCatalog(adapters)
        for name, path in self.catalog.paths.items():  # at start, not as a 400 on every request using it
            _check_fits(base, name, Path(path))
        self.peft: Any = None  # the PeftModel, from the first load on
        self.batched = batched
        self.lora: BatchedLora | None = None  # the batched path's hooks, while batched and adapters are loaded
        self.loaded: LoadedAdapters[str] = LoadedAdapters(self._load, self._unload, max_loaded=max_loaded)

    @property
    def names(self) -> list[str]:
        return self.catalog.names

    def check(self, adapter: str | None) -> None:
        """400 naming `model` for an adapter this instance does not serve."""
        if adapter is not None and adapter not in self.catalog.paths:
            served = ", ".join(self.names) or "none"
            raise InvalidInput(f"model {adapter!r} is not served by this instance; it serves {served}",
                               field="model")

    def forward(self, adapters: list[str | None], **inputs: Any) -> Any:
        """One forward of the base model where row i runs with `adapters[i]` (None: the base alone)."""
        if self.peft is None:
            return self.base(**inputs)
        if self.lora is None:
            return self.peft(**inputs, adapter_names=[a or BASE for a in adapters])
        with self.lora.rows(adapters, inputs["input_ids"].device):
            return self.peft(**inputs)

    def use_batched(self, batched: bool) -> None:
        """Switch between batched LoRA and PEFT's own mixed-batch forward (between forwards only)."""
        self.batched = batched
        self._restack()

    def _restack(self) -> None:
        if self.lora is not None:
            self.lora.close()
            self.lora = None
        if self.batched and self.peft is not None:
            self.lora = BatchedLora(self.peft)

    def stats(self) -> dict[str, Any]:
        return {"served": self.names, **self.loaded.stats()}

    def close(self) -> None:
        self.loaded.clear()

    def _load(self, name: str) -> str:
        from peft import PeftModel

        path = self.catalog.paths[name]
        if self.peft is None:
            try:
                self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            except Exception:
                _remove_lora_layers(self.base)  # PEFT injects them before it loads the weights
                raise
            self.peft.eval()
        else:
            self.peft.load_adapter(path, adapter_name=name)
            self.peft.eval()
        self._restack()
        return name

    def _unload(self, name: str, _handle: str) -> None:
        if self.peft is not None and name in self.peft.peft_config:
            if len(self.peft.peft_config) > 1:
                if name in self.peft.active_adapters:  # rows name their adapter; the active one only matters to PEFT
                    other = next(n for n in self.peft.peft_config if n != name)
                    self.peft.set_adapter(other, inference_mode=True)
                self.peft.delete_adapter(name)
                self._restack()
            else:
                # PEFT cannot forward with no adapter: unwrap the base instead of deleting the last one
                self.base = self.peft.unload()
                self.peft = None
                self._restack()


def _check_fits(base: Any, name: str, path: Path) -> None:
    """Refuse an adapter whose LoRA weights do not fit the base model's layers (trained on another base, or
    damaged), by reading the tensors' shapes from its file rather than loading it."""
    from safetensors import safe_open

    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            return  # PEFT's older pickle format: checked when it loads
        raise InvalidInput(f"adapter {name}: {path} has no adapter_model.safetensors; save it again with PEFT",
                           field="adapter")
    modules = dict(base.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            head, _, part = key.rpartition(".lora_")
            if part not in ("A.weight", "B.weight"):
                continue  # embeddings' LoRA, DoRA magnitudes, modules_to_save: PEFT checks them as it loads
            target = head.removeprefix("base_model.model.")
            module = modules.get(target)
            shape = list(f.get_slice(key).get_shape())
            if module is None:
                problem = f"modifies {target}, which the base model does not have"
            elif not hasattr(module, "in_features"):
                continue
            elif (part == "A.weight" and shape[-1] != module.in_features) or \
                    (part == "B.weight" and shape[0] != module.out_features):
                problem = (f"has {key} of shape {shape}, where {target} takes {module.in_features} and gives "
                           f"{module.out_features} features")
            else:
                continue
            raise InvalidInput(f"adapter {name} {problem}: it was not trained on this base model; deploy it with "
                               "its own base", field="adapter")


def _remove_lora_layers(base: Any) -> None:
    """Put back the base layers PEFT wrapped in LoRA layers (after a load that failed half way)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for path, module in list(base.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = path.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, module.get_base_layer())
