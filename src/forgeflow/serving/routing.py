"""Which deployment serves a request (the instance and admission are serving.admission's).

- Deployment: the `azureml-model-deployment` header wins; then a request's `model` that names a
  deployment; then a `model` naming a registered fine-tune (`NAME`, `NAME:VERSION`, `NAME@latest`) that
  exactly one deployment serves, as an adapter on its base or as its one model (a served fine-tune's alias,
  `NAME@champion`, is a 400: a deployment is pinned to the version its alias named when it was made); else a
  weighted draw over the live traffic split (a `model` that names no deployment, such as the gpt-4 a Prompt flow
  file names, is served by the traffic split too).
- Mirror: with the mirror percentage, a copy goes to the mirror deployment (traffic-routed
  requests only, as Azure does).
"""

from __future__ import annotations

import random

from forgeflow.errors import ForgeflowError, NotFound
from forgeflow.inference.adapters import match_adapter
from forgeflow.serving.records import EndpointConfig


def choose_deployment(cfg: EndpointConfig, header: str | None, model: str | None = None) -> tuple[str, bool]:
    """The deployment to serve, and whether traffic rules (not the caller) chose it."""
    if header:
        return _named(cfg, header), False
    if model and model in cfg.deployments:
        return model, False
    if model and (serving := serving_model(cfg, model)):
        return serving, False
    live = _live(cfg)
    if len(live) == 1:
        return live[0][0], True
    return random.choices([n for n, _ in live], weights=[p for _, p in live])[0], True


def serving_model(cfg: EndpointConfig, model: str) -> str | None:
    """The one deployment serving the registered fine-tune `model` names (as an adapter on its base or as its one
    model), if exactly one does. A version its deployment does not serve matches none here: the traffic split's
    instance then says which it serves. An alias of a fine-tune served here (`tuned@champion`) is a 400 naming
    `model` (never a draw by the traffic split, which could serve another model)."""
    if "@" in model:
        match_adapter(model, [ref for dep in cfg.deployments.values() for ref in dep.registered_models])
    found = []
    for name, dep in cfg.deployments.items():
        try:
            if match_adapter(model, dep.registered_models):
                found.append(name)
        except ForgeflowError:
            continue
    return found[0] if len(found) == 1 else None


def main_deployment(cfg: EndpointConfig, header: str | None) -> str:
    """The deployment that speaks for the endpoint (Azure AI model inference's model info): the header's, else
    the one with the most traffic (of equals, the first by name), so the answer does not change between calls."""
    if header:
        return _named(cfg, header)
    return min(_live(cfg), key=lambda live: (-live[1], live[0]))[0]


def _named(cfg: EndpointConfig, header: str) -> str:
    if header not in cfg.deployments:
        raise NotFound(f"endpoint {cfg.name!r} has no deployment {header!r}", field="azureml-model-deployment")
    return header


def _live(cfg: EndpointConfig) -> list[tuple[str, int]]:
    live = [(name, pct) for name, pct in cfg.traffic.items() if pct > 0 and name in cfg.deployments]
    if not live:
        raise NotFound(f"endpoint {cfg.name!r} has no deployment with traffic: set it with "
                       f"forgeflow online-endpoint update --name {cfg.name} --traffic NAME=100")
    return live


def choose_mirror(cfg: EndpointConfig, served_by: str) -> str | None:
    """The deployment that gets a mirrored copy of this request, if any."""
    for name, pct in cfg.mirror.items():
        if pct > 0 and name != served_by and name in cfg.deployments and random.random() * 100 < pct:
            return name
    return None
