"""The Python SDK: a thin client of the REST API, used by the CLI too. Error answers come back as the
forgeflow.errors class their body names; httpx's transport errors are mapped onto the same tree here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from forgeflow.errors import ForgeflowError, RequestTimeout, ServerUnavailable, from_dict
from forgeflow.names import url_path
from forgeflow.store.home import server_url



def admin_token() -> str:
    """The token the client sends: FORGEFLOW_TOKEN (a personal access token, or the owner token), else the owner
    token of this machine's workspace (created on first use)."""
    token = os.environ.get("FORGEFLOW_TOKEN")
    if token:
        return token
    from forgeflow.store.workspace import Workspace

    return Workspace.open().admin_token()


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or server_url()).rstrip("/")
        self._token = token
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = admin_token()
        return self._token

    def _headers(self, headers: dict | None, auth: bool) -> dict:
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _unreachable(self, exc: httpx.TransportError, method: str, path: str) -> ForgeflowError:
        """The one mapping from httpx's transport errors to the tree."""
        if isinstance(exc, httpx.ConnectError):
            return ServerUnavailable(f"no forgeflow server answers at {self.url}: "
                                     "start one with 'forgeflow serve --detach'")
        if isinstance(exc, httpx.TimeoutException):
            return RequestTimeout(f"the server at {self.url} did not answer {method} {path} in time")
        return ServerUnavailable(f"the connection to the server at {self.url} failed during {method} {path}: {exc!r}")

    @staticmethod
    def _failure(resp: httpx.Response) -> ForgeflowError:
        """An error answer (its body already read) as the exception its body names."""
        try:
            body = resp.json()
        except ValueError:
            body = {"message": resp.text or resp.reason_phrase}
        return from_dict(resp.status_code, body if isinstance(body, dict) else {"message": str(body)})

    def request(self, method: str, path: str, *, timeout: float | None = None, auth: bool = True, **kw: Any) -> Any:
        headers = self._headers(kw.pop("headers", None), auth)
        try:
            resp = self._http.request(method, path, headers=headers,
                                      timeout=timeout if timeout is not None else self._http.timeout, **kw)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, method, path) from None
        if resp.status_code >= 400:
            raise self._failure(resp)
        return resp.json() if resp.content else None

    @contextmanager
    def stream(self, method: str, path: str, **kw: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it arrives (downloads); errors are raised as request() raises them."""
        try:
            with self._http.stream(method, path, headers=self._headers(kw.pop("headers", None), True), **kw) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._failure(resp)
                yield resp
        except httpx.TransportError as exc:
            raise self._unreachable(exc, method, path) from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.request("PATCH", path, json=json, **kw)

    def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def healthy(self) -> bool:
        try:
            self.request("GET", "/api/health", auth=False, timeout=2.0)
            return True
        except ForgeflowError:
            return False

    # -- the calls other code needs by name ------------------------------------
    def connection(self, name: str) -> dict:
        """A connection with its secrets decrypted (the flow runner's connection provider)."""
        return self.get(url_path("api", "connections", name), params={"with_secrets": "true"})

    def score(self, endpoint: str, body: Any, *, key: str, deployment: str | None = None, timeout: float = 300.0) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        return self.request("POST", url_path("endpoints", endpoint, "score"), json=body, headers=headers, auth=False,
                            timeout=timeout)

    # -- evaluations -----------------------------------------------------------
    def evaluate(self, body: dict[str, Any]) -> dict:
        """Queue an evaluation job (POST /api/evaluations); the answer is the job."""
        return self.post("/api/evaluations", body)

    def evaluation(self, job_id: str) -> dict:
        """A Completed evaluation's result (result.json); Conflict, naming its status, while it runs."""
        return self.get(url_path("api", "evaluations", job_id))

    # -- rollouts (online-endpoint rollout) -------------------------------------
    def start_rollout(self, endpoint: str, deployment: str, promote_if: str, **options: Any) -> dict:
        """Start moving `deployment`'s traffic up in steps while `promote_if` holds (api/rollouts.py's fields)."""
        given = {k: v for k, v in options.items() if v is not None}
        body = {"deployment": deployment, "promote_if": promote_if} | given
        return self.post(url_path("api", "endpoints", endpoint, "rollouts"), body)

    def rollout(self, endpoint: str) -> dict:
        """The endpoint's running rollout (with its step's figures so far), else its last one."""
        return self.get(url_path("api", "endpoints", endpoint, "rollouts", "current"))

    def rollouts(self, endpoint: str) -> list[dict]:
        return self.get(url_path("api", "endpoints", endpoint, "rollouts"))

    def cancel_rollout(self, endpoint: str) -> dict:
        """Stop the running rollout; the leader restores the split from before it within a poll."""
        return self.post(url_path("api", "endpoints", endpoint, "rollouts", "current", "cancel"))
