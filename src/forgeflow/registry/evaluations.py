"""A registered model version's newest evaluation, kept on the version as its TAG_EVALUATION tag (JSON), which
`ModelVersion.evaluation` reads back: the evaluation job, the baseline, the data, both sides' aggregate metrics
with their intervals, the comparison and when it finished. The rows stay with the evaluation job."""

from __future__ import annotations

import json
from typing import Any

from forgeflow.errors import InvalidInput
from forgeflow.names import parse_model_ref
from forgeflow.registry import models

# MLflow's limit on a model version tag's value is 5,000 characters on some of its stores; a summary stays under.
MAX_SUMMARY_CHARS = 5000


def record_evaluation(ref: str, summary: dict[str, Any], *, mlflow_uri: str | None = None) -> models.ModelVersion:
    """Store `summary` on the registered version `ref` (`name:version`), replacing an earlier evaluation's.
    `mlflow_uri` names the registry (a worker's job file's); by default the workspace's."""
    name, version, _ = parse_model_ref(ref)
    if version is None:
        raise InvalidInput(f"model {ref!r}: an evaluation is recorded on one version; name it as NAME:VERSION",
                           field="model")
    mv = models.find_version(ref, models.versions_of(name, mlflow_uri))
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"), allow_nan=False)
    if len(text) > MAX_SUMMARY_CHARS:
        raise InvalidInput(f"the evaluation summary for {ref} is {len(text)} characters, past the "
                           f"{MAX_SUMMARY_CHARS} a version tag holds; keep its rows out of it", field="summary")
    models.client(mlflow_uri).set_model_version_tag(mv.name, mv.version, models.TAG_EVALUATION, text)
    mv.evaluation = json.loads(text)
    return mv
