"""Find and load a flow of any kind: a DAG (`flow.dag.yaml`), a flex entry (`flow.flex.yaml`) or a `.prompty` file.

`load_flow` caches the parsed Flow by file path and mtime: batch runs and servers call it per
line, and re-parsing YAML there would dominate the engine's per-node cost.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from forgeflow.flows import dag, flex, prompty
from forgeflow.flows.contract import Flow, mapping, parse_variant
from forgeflow.yamlfile import load_yaml

_cache: dict[tuple[Path, str | None], tuple[int, Flow]] = {}
_cache_lock = threading.Lock()
_paths: dict[str, Path] = {}  # as given -> resolved flow file (resolving costs more than the run)


def read_yaml(path: Path) -> dict:
    return mapping(load_yaml(path.read_text(encoding="utf-8"), str(path)), path.name)


def flow_file(target: Path) -> Path:
    """The file that defines a flow: the file given, a flex flow's YAML, or flow.dag.yaml."""
    if target.is_file():
        return target.resolve()
    for name in flex.FLEX_FILES:
        if (target / name).is_file():
            return (target / name).resolve()
    return dag.find_dag_file(target).resolve()


def load_flow(flow_dir: Path | str | Flow, variant: str | None = None) -> Flow:
    """Read and validate a flow (folder, DAG/flex YAML, or .prompty); errors name the node and field at fault.

    `variant` (`${node.variant_id}`) runs that variant of a node in place of its default. The result is cached
    until the file's mtime changes; treat it as read-only.
    """
    if isinstance(flow_dir, Flow):
        return dag.pick_variant(flow_dir, variant) if variant else flow_dir
    key = str(flow_dir) if Path(flow_dir).is_absolute() else f"{os.getcwd()}|{flow_dir}"
    path = _paths.get(key)
    try:
        mtime = path.stat().st_mtime_ns if path is not None else None
    except OSError:
        mtime = None
    if mtime is None:
        path = flow_file(Path(flow_dir))
        mtime = path.stat().st_mtime_ns
        _paths[key] = path
    variant = "${%s.%s}" % parse_variant(variant) if variant else None
    hit = _cache.get((path, variant))
    if hit is not None and hit[0] == mtime:
        return hit[1]
    if variant is not None:
        flow = dag.pick_variant(load_flow(path), variant)
    elif path.suffix == prompty.PROMPTY_SUFFIX:
        flow = prompty.load_prompty(path)
    elif path.name in flex.FLEX_FILES:
        flow = flex.load_flex(path, read_yaml(path))
    else:
        flow = dag.load_dag(path, read_yaml(path))
    with _cache_lock:
        _cache[(path, variant)] = (mtime, flow)
    return flow
