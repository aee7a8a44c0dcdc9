from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
from tiny import build_tiny_model


RAY_GROUP = "ray"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """For `make test`'s two workers (pytest-xdist, `--dist loadgroup`): a module's tests run on one worker, so its
    module-scoped servers and browsers start once; and every module with a test on the loopback Ray cluster runs on
    one worker, so the run starts that cluster once. tryfirst: xdist reads the groups in its own hook."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    for module, its in modules.items():
        on_ray = any(i.get_closest_marker("ray") or "loopback_ray" in i.fixturenames for i in its)
        for item in its:
            item.add_marker(pytest.mark.xdist_group(RAY_GROUP if on_ray else module))


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


@contextmanager
def _throwaway_postgres():
    from pg_harness import PostgresMissing, start_postgres

    try:
        pg = start_postgres()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def postgres():
    """One real Postgres cluster for the whole run (Debian's postgresql package, a temporary directory, a loopback
    port): `.url` is its `forgeflow` database, `.new_database()` a fresh empty one, `.restart()` / `.kill()` stop
    it as a crash would. Without the package the test fails and says how to install it: never a silent skip."""
    with _throwaway_postgres() as pg:
        yield pg


@pytest.fixture
def private_postgres():
    """A Postgres cluster of this test alone, for a test that restarts it (the session's serves every other test)."""
    with _throwaway_postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, forgeflow_home, monkeypatch) -> str:
    """The store of this test, once on SQLite (the workspace's default file) and once on a fresh Postgres database;
    FORGEFLOW_DATABASE_URL points the workspace at it, so Workspace.open() and every server in the test use it."""
    if request.param == "sqlite":
        forgeflow_home.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{forgeflow_home / 'forgeflow.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    monkeypatch.setenv("FORGEFLOW_DATABASE_URL", url)
    return url
