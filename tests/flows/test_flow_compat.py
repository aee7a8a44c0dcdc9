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


def test_openai_connection_shims_have_prompt_flow_attribute_names():
    install_promptflow_shim()
    from promptflow.connections import AzureOpenAIConnection, OpenAIConnection

    oai = OpenAIConnection(api_key="sk-1", base_url="http://h/v1", name="o")
    assert (oai.api_key, oai.base_url, oai.organization, oai.type) == ("sk-1", "http://h/v1", None, "open_ai")
    assert "sk-1" not in repr(oai) and OpenAIConnection(api_key="k").base_url == "https://api.openai.com/v1"
    az = AzureOpenAIConnection(api_key="k", api_base="https://r.openai.azure.com")
    assert (az.api_base, az.api_type, az.api_version, az.type) == ("https://r.openai.azure.com", "azure", "2024-02-01", "azure_open_ai")


def test_python_tool_receives_openai_connection(make_flow):
    from forgeflow.flows.executor import run_flow

    flow_dir = make_flow(
        "inputs: {}\noutputs: {o: {reference: '${n.output}'}}\nnodes:\n"
        "- {name: n, type: python, source: {type: code, path: t.py}, inputs: {c: oai, a: az}}\n",
        {"t.py": "from promptflow import tool\nfrom promptflow.connections import OpenAIConnection, AzureOpenAIConnection\n\n"
                 "@tool\ndef f(c: OpenAIConnection, a: AzureOpenAIConnection) -> str:\n"
                 "    return f'{type(c).__name__} {c.api_key} {c.base_url} {type(a).__name__} {a.api_base} {a.api_version}'\n"},
    )
    conns = {
        "oai": {"name": "oai", "type": "open_ai", "configs": {"base_url": "http://x/v1"}, "secrets": {"api_key": "k1"}},
        "az": {"name": "az", "type": "azure_open_ai", "configs": {"api_base": "http://az", "api_version": "v9"},
               "secrets": {"api_key": "k2"}},
    }
    out = run_flow(flow_dir, {}, connection_provider=conns.get).outputs["o"]
    assert out == "OpenAIConnection k1 http://x/v1 AzureOpenAIConnection http://az v9"


def test_a_real_promptflow_package_is_used_not_replaced(tmp_path, monkeypatch, make_flow):
    """With a (fake) real promptflow importable, tools decorated by it run and get its connection class."""
    from forgeflow.flows.executor import run_flow

    pkg = tmp_path / "site" / "promptflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import functools\nREAL = True\n\ndef tool(func):\n    @functools.wraps(func)\n"
        "    def wrapper(*a, **k):\n        return func(*a, **k)\n    setattr(wrapper, '__original_function', func)\n    return wrapper\n"
    )
    (pkg / "connections.py").write_text(
        "class CustomConnection:\n    def __init__(self, configs=None, secrets=None, name=None, **kw):\n"
        "        self.configs, self.secrets, self.name = configs or {}, secrets or {}, name\n"
        "    def __getattr__(self, k):\n        d = {**self.__dict__.get('configs', {}), **self.__dict__.get('secrets', {})}\n"
        "        if k in d:\n            return d[k]\n        raise AttributeError(k)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        flow_dir = make_flow(
            "inputs: {}\noutputs: {o: {reference: '${n.output}'}}\nnodes:\n"
            "- {name: n, type: python, source: {type: code, path: t.py}, inputs: {c: my}}\n",
            {"t.py": "from promptflow import tool\nfrom promptflow.connections import CustomConnection\n\n"
                     "@tool\ndef f(c: CustomConnection) -> str:\n    return f'{type(c).__module__} {c.endpoint} {c.key}'\n"},
        )
        provider = lambda n: {"name": n, "type": "custom", "configs": {"endpoint": "E"}, "secrets": {"key": "K"}}
        assert run_flow(flow_dir, {}, connection_provider=provider).outputs == {"o": "promptflow.connections E K"}
        import promptflow

        assert promptflow.REAL and not compat.shim_installed()
    finally:
        for name in [m for m in sys.modules if m == "promptflow" or m.startswith("promptflow.")]:
            del sys.modules[name]
