"""The Python client: error answers come back as the class their body names, transport errors join the tree."""

import httpx
import pytest

from forgeflow.client import Client
from forgeflow.errors import NotFound, RequestTimeout, ServerUnavailable


def _client(handler) -> Client:
    c = Client("http://test", token="t")
    c._http = httpx.Client(base_url=c.url, transport=httpx.MockTransport(handler))
    return c


def test_an_error_answer_is_raised_as_its_class():
    c = _client(lambda r: httpx.Response(404, json={"error": "NotFound", "message": "no job x", "field": "id"}))
    with pytest.raises(NotFound, match="no job x") as info:
        c.get("/api/jobs/x")
    assert info.value.field == "id" and info.value.status_code == 404
    with pytest.raises(NotFound, match="no job x"), c.stream("GET", "/api/jobs/x"):
        pass


@pytest.mark.parametrize(("raised", "expected", "says"), [
    (httpx.ConnectError("refused"), ServerUnavailable, "forgeflow serve --detach"),
    (httpx.ReadTimeout("slow"), RequestTimeout, "did not answer GET /api/jobs in time"),
    (httpx.RemoteProtocolError("closed"), ServerUnavailable, "failed during GET /api/jobs"),
])
def test_transport_errors_join_the_tree(raised, expected, says):
    def handler(request):
        raise raised

    c = _client(handler)
    with pytest.raises(expected, match=says):
        c.get("/api/jobs")
    with pytest.raises(expected, match=says), c.stream("GET", "/api/jobs"):
        pass
    assert not c.healthy()
