"""Runtimes over a tools-capable tiny model, shared by the decoding tests: the `transformers` runtime, and
the `llamacpp` one where llama-cpp-python is installed (the same model exported to GGUF)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tiny import build_tiny_model, vary_weights

needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: pip install 'forgeflow[llamacpp]' (make test installs it)",
)


@pytest.fixture(scope="session")
def tools_model_dir(tmp_path_factory) -> Path:
    """The tiny model with a Hermes-style tools template and larger random weights, so its greedy choices are
    decisive (a batch's padding or llama.cpp's f16 weights do not flip them) and vary with the prompt."""
    out = build_tiny_model(tmp_path_factory.mktemp("tools-model"), tools=True)
    return vary_weights(out, seed=3)


@pytest.fixture(scope="session")
def transformers_runtime(tools_model_dir):
    from forgeflow.inference.generation import ChatGenerator

    loaded = ChatGenerator(tools_model_dir)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def llamacpp_runtime(tools_model_dir):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    loaded = LlamaCppRuntime(tools_model_dir, threads=1)
    yield loaded
    loaded.close()


@pytest.fixture(params=["transformers", pytest.param("llamacpp", marks=needs_llamacpp)])
def runtime(request):
    """Each runtime in turn (each loaded once for the session)."""
    return request.getfixturevalue(f"{request.param}_runtime")
