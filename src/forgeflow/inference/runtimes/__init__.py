"""Serving runtimes: what turns a model folder into a loaded model that answers chats.

Each runtime offers the same seam (runtimes/base.py `Runtime`): construct = load, `generate`,
`stream`, `health`, `close`. The model server picks one by name per deployment. Both prepare a
request the same way (runtimes/prepare.py: prompt, sampler, grammar, tools) and pick tokens with
the same Sampler (inference/sampling.py), so they honour the same settings the same way.

- transformers: any HF causal LM, concurrent requests batched continuously (inference/batching.py).
- llamacpp: the model exported to GGUF and run by llama-cpp-python (the `llamacpp` extra).
- vllm: planned for GPUs; named here so choosing it gives a clear error, not a typo's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from forgeflow.errors import InvalidInput
from forgeflow.inference.runtimes.base import Runtime

AVAILABLE = ("transformers", "llamacpp")
PLANNED = ("vllm",)


def check_runtime(name: str) -> str:
    """The runtime name if forgeflow can serve with it here, else InvalidInput saying why not."""
    if name in PLANNED:
        raise InvalidInput(f"runtime {name!r} is planned (GPU serving) but not available yet: "
                           f"use one of {', '.join(AVAILABLE)}", field="runtime")
    if name not in AVAILABLE:
        raise InvalidInput(f"unknown runtime {name!r}: use one of {', '.join(AVAILABLE)}", field="runtime")
    if name == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise InvalidInput("runtime 'llamacpp' needs llama-cpp-python: pip install 'forgeflow[llamacpp]'",
                           field="runtime")
    return name


def load_runtime(name: str, model_dir: str | Path, *, device: str = "cpu", max_batch_size: int = 8,
                 max_queue: int = 64, gguf_type: str = "f16", threads: int | None = None,
                 adapters: dict[str, Path] | None = None, max_adapters: int = 8,
                 prefix_cache: bool = True) -> Runtime:
    """Load the model folder with the named runtime (blocking: this is where weights are read). With `adapters`
    (name -> PEFT LoRA folder, inference/adapters.py) the folder is their base model, loaded once; at most
    `max_adapters` of them are held loaded. `prefix_cache` keeps the KV cache of earlier prompts for later
    ones that start the same way (a chat's next turn, a shared system prompt)."""
    check_runtime(name)
    if name == "llamacpp":
        from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

        return LlamaCppRuntime(model_dir, gguf_type=gguf_type, threads=threads, max_queue=max_queue,
                               max_batch_size=max_batch_size, adapters=adapters, max_adapters=max_adapters,
                               prefix_cache=prefix_cache)
    from forgeflow.inference.generation import ChatGenerator

    return ChatGenerator(model_dir, device=device, max_batch_size=max_batch_size, max_queue=max_queue,
                         adapters=adapters, max_adapters=max_adapters, prefix_cache=prefix_cache)
