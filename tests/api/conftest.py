import httpx
import pytest

from forgeflow.api.app import create_app
from forgeflow.store.workspace import Workspace


@pytest.fixture
def ws():
    return Workspace.open()


@pytest.fixture
def app(ws):
    return create_app(ws, background=False)


@pytest.fixture
async def api(app, ws):
    """In-process client with the admin token."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as c:
            yield c


@pytest.fixture
def anyio_backend():
    return "asyncio"
