from __future__ import annotations

from pathlib import Path

import pytest
from tiny import build_tiny_model


@pytest.fixture(autouse=True)
def forgeflow_home(tmp_path, monkeypatch):
    """Every test gets its own workspace home and never reaches a hub."""
    home = tmp_path / "ffhome"
    monkeypatch.setenv("FORGEFLOW_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama chat model (2 layers, ~400-token vocab) saved as a HF folder."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def loopback_ray():
    """One real multi-node Ray cluster on loopback for the whole run (head with no CPUs, two worker nodes).
    Tests attach forgeflow to it by its GCS address; none may leave work running on it."""
    from ray_harness import start_loopback_ray

    ray = start_loopback_ray()
    yield ray
    ray.shutdown()
