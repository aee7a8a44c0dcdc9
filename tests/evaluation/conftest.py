from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from eval_fixtures import chat_rows, random_adapter_model, trained_model


@pytest.fixture(scope="session")
def eval_models(tiny_model_dir, tmp_path_factory) -> SimpleNamespace:
    """The tiny base with a LoRA trained a few steps on the evaluation rows merged in (better) and with a random
    LoRA merged in (worse), as a registered fine-tune's folder holds them."""
    root = tmp_path_factory.mktemp("eval-models")
    return SimpleNamespace(base=Path(tiny_model_dir), better=trained_model(tiny_model_dir, root / "better", chat_rows()),
                           worse=random_adapter_model(tiny_model_dir, root / "worse", seed=1))
