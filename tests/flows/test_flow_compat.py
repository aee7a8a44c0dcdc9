from __future__ import annotations

import importlib
import sys

from forgeflow.flows import compat
from forgeflow.flows.compat import CustomConnection, install_promptflow_shim, log_metric


def test_shim_makes_promptflow_imports_work():
    assert "promptflow" not in sys.modules
    assert install_promptflow_shim() is True
    assert install_promptflow_shim() is True
    from promptflow import tool as t1
    from promptflow.connections import CustomConnection as CC
    from promptflow.core import log_metric as lm
    from promptflow.core import tool as t2

    assert t1 is t2 is compat.tool and CC is CustomConnection and lm is log_metric
    assert importlib.import_module("promptflow.connections").CustomConnection is CustomConnection


def test_shim_leaves_a_real_promptflow_alone(tmp_path, monkeypatch):
    pkg = tmp_path / "promptflow"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert install_promptflow_shim() is False
        assert "promptflow" not in sys.modules
        import promptflow

        assert promptflow.REAL
        assert install_promptflow_shim() is False
    finally:
        sys.modules.pop("promptflow", None)


def test_tool_decorator_both_forms():
    @compat.tool
    def a(x: str) -> str:
        return x

    @compat.tool(name="B", description="d")
    def b(x: str) -> str:
        return x * 2

    assert compat.is_tool(a) and compat.is_tool(b) and a("q") == "q" and b("q") == "qq"
    assert getattr(b, compat.TOOL_MARK) == {"name": "B", "description": "d"}
    assert not compat.is_tool(len)


def test_custom_connection_access_and_masking():
    conn = CustomConnection({"endpoint": "http://h/score"}, {"key": "s3cret"}, name="custom-phi3")
    assert conn.endpoint == "http://h/score" and conn.key == "s3cret"
    assert conn["endpoint"] == "http://h/score" and conn["key"] == "s3cret"
    assert conn.configs == {"endpoint": "http://h/score"} and conn.secrets == {"key": "s3cret"}
    assert conn.is_secret("key") and not conn.is_secret("endpoint") and "key" in conn
    assert conn.get("missing", 1) == 1
    assert "s3cret" not in repr(conn) and "s3cret" not in str(conn) and "******" in repr(conn)
    assert "http://h/score" in repr(conn)
    try:
        conn.missing
    except AttributeError as exc:
        assert "missing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
    conn.key = "rotated"
    assert conn.secrets == {"key": "rotated"}


def test_log_metric_outside_a_run_is_a_no_op():
    log_metric("accuracy", 0.5)
    sink, token = compat.start_metrics()
    log_metric("accuracy", 0.9)
    compat.stop_metrics(token)
    log_metric("accuracy", 0.1)
    assert sink == [{"key": "accuracy", "value": 0.9, "variant_id": None}]
