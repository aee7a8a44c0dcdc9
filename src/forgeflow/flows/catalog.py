"""The flows Studio and the REST API know by name: the bundled examples and FORGEFLOW_HOME/flows/<name>.

`describe` turns a flow into what a UI draws: inputs, outputs, nodes and the edges between them.
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, ForgeflowError, InvalidInput, NotFound, shorten
from forgeflow.flows.contract import Flow, chat_history_name, chat_input_name, chat_output_name
from forgeflow.flows.loader import flow_file, load_flow
from forgeflow.names import check_name

EXAMPLES = Path(__file__).parent / "examples"
_SKIP = shutil.ignore_patterns(".forgeflow", "__pycache__", ".runs", "*.pyc")


class FlowCatalog:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _folders(self) -> list[tuple[str, str, Path]]:
        found = [("example", p.name, p) for p in sorted(EXAMPLES.iterdir()) if _is_flow(p)]
        if self.root.is_dir():
            found += [("workspace", p.name, p) for p in sorted(self.root.iterdir()) if _is_flow(p)]
        return found

    def path(self, name: str) -> Path:
        for _source, flow_name, path in self._folders():
            if flow_name == name:
                return path
        raise NotFound(f"no flow {name!r}: see GET /api/flows, or add a folder with POST /api/flows", field="name")

    def list(self) -> list[dict[str, Any]]:
        out = []
        for source, name, path in self._folders():
            entry: dict[str, Any] = {"name": name, "path": str(path), "source": source}
            try:
                flow = load_flow(path)
            except Exception as exc:  # a broken flow still lists, with the reason
                entry |= {"error": shorten(getattr(exc, "message", str(exc))), "is_chat": False, "description": ""}
            else:
                entry |= {"kind": flow.kind, "is_chat": chat_input_name(flow) is not None,
                          "description": _description(path), "nodes": len(flow.nodes)}
            out.append(entry)
        return out

    def show(self, name: str) -> dict[str, Any]:
        path = self.path(name)
        return {"name": name, "path": str(path), "description": _description(path), **describe(load_flow(path))}

    def add(self, name: str, source: Path, *, overwrite: bool = False) -> dict[str, Any]:
        """Copy a flow folder into the workspace under `name`, all or nothing: the copy is made beside the
        workspace's flows and checked before it replaces anything, so a failed or broken copy changes nothing."""
        check_name(name, "flow")
        if name in {p.name for p in EXAMPLES.iterdir()}:
            raise Conflict(f"{name!r} is a bundled example flow: choose another name", field="name")
        source = Path(source).expanduser().resolve()
        if not source.is_dir():
            raise InvalidInput(f"path {source}: not a folder holding flow.dag.yaml", field="path")
        target = self.root / name
        if source == target.resolve() or source.is_relative_to(target.resolve()):
            raise InvalidInput(f"path {source} is the workspace's copy of flow {name!r} itself", field="path")
        _refuse_links(source, source)  # before anything in the folder is read
        load_flow(source)
        if target.exists() and not overwrite:
            raise Conflict(f"flow {name!r} exists: use overwrite=true to replace it", field="name")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".adding", dir=self.root))
        try:
            copy, retired = staging / "flow", staging / "replaced"
            try:
                shutil.copytree(source, copy, symlinks=True, ignore=_SKIP)
            except (OSError, shutil.Error) as exc:
                raise InvalidInput(f"could not copy the flow folder {source}: {exc}", field="path") from None
            _refuse_links(copy, source)  # a link made while the folder was being copied
            try:
                load_flow(copy)
            except ForgeflowError as exc:
                raise InvalidInput(f"flow {source}, copied into the workspace, does not load: {exc.message} (a flow "
                                   "must hold the files it uses: additional_includes outside it are not copied)",
                                   field="path") from None
            if target.exists():
                target.rename(retired)
            try:
                copy.rename(target)
            except OSError as exc:
                if retired.exists():
                    retired.rename(target)
                raise ForgeflowError(f"could not install flow {name!r}: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.show(name)

    def delete(self, name: str) -> None:
        path = self.path(name)
        if path.parent == EXAMPLES:
            raise Conflict(f"{name!r} is a bundled example flow and cannot be deleted", field="name")
        # Moved aside first: a delete that fails half-way leaves no half a flow under the name.
        trash = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".deleting", dir=self.root))
        path.rename(trash / name)
        shutil.rmtree(trash, ignore_errors=True)


def _refuse_links(folder: Path, shown: Path) -> None:
    """Refuse a flow folder holding symbolic links or special files: a copied link brings in whatever it points
    at (a key file, a folder elsewhere on the machine), and reading a FIFO blocks for ever."""
    for parent, dirs, files in os.walk(folder):  # a link to a folder is listed in dirs, not followed
        skipped = _SKIP(parent, [*dirs, *files])
        dirs[:] = [d for d in dirs if d not in skipped]
        for path in [Path(parent, entry) for entry in [*dirs, *files] if entry not in skipped]:
            where = shown / path.relative_to(folder)
            if path.is_symlink():
                raise InvalidInput(f"path {where}: a symbolic link; a flow folder must hold its files itself "
                                   "(copy the file in instead of linking it)", field="path")
            if not (path.is_dir() or path.is_file()):
                raise InvalidInput(f"path {where}: not a regular file or folder", field="path")


def _is_flow(path: Path) -> bool:
    if not path.is_dir() or path.name.startswith((".", "_")):
        return False
    try:
        flow_file(path)
    except ForgeflowError:
        return False
    return True


def _description(path: Path) -> str:
    """The first paragraph of the flow's README, if it has one."""
    readme = path / "README.md"
    if not readme.is_file():
        return ""
    lines = [line.strip() for line in readme.read_text(errors="replace").splitlines()]
    text: list[str] = []
    for line in lines:
        if line.startswith("#") or (not line and not text):
            continue
        if not line:
            break
        text.append(line)
    return " ".join(text)[:500]


def describe(flow: Flow) -> dict[str, Any]:
    """Inputs, outputs, nodes and edges (`${inputs.x}` -> node, node -> node, node -> output); a node with
    variants lists them and names its default."""
    inputs = {i.name: {"type": i.type, "default": i.default if i.has_default else None, "required": i.required,
                       "is_chat_input": i.is_chat_input, "is_chat_history": i.is_chat_history,
                       "description": i.description} for i in flow.inputs.values()}
    outputs = {o.name: {"type": o.type, "reference": str(o.reference), "is_chat_output": o.is_chat_output,
                        "description": o.description} for o in flow.outputs.values()}
    nodes, edges = [], []
    for name in flow.order:
        node = flow.nodes[name]
        connection = node.connection
        if connection is None and node.type == "python" and node.path is not None:
            literal = {k: v for k, v in node.inputs.items() if isinstance(v, str) and not v.startswith("${")}
            connection = next((literal[p] for p in _connection_params(node.path) if p in literal), None)
        choices = flow.node_variants.get(name)
        nodes.append({"name": name, "type": node.type, "source": node.path.name if node.path else None,
                      "inputs": {k: str(v) for k, v in node.inputs.items()}, "connection": connection,
                      "api": node.api, "aggregation": node.aggregation,
                      "activate_when": str(node.activate_when) if node.activate_when else None,
                      "variant": node.variant, "default_variant": choices.default if choices else None,
                      "variants": {vid: {"source": v.path.name if v.path else None} for vid, v in
                                   choices.variants.items()} if choices else None})
        seen = set()
        for ref in node.references():
            source = f"inputs.{ref.name}" if ref.kind == "inputs" else ref.name
            if source not in seen:
                seen.add(source)
                edges.append({"from": source, "to": name})
    for out in flow.outputs.values():
        ref = out.reference
        edges.append({"from": f"inputs.{ref.name}" if ref.kind == "inputs" else ref.name, "to": f"outputs.{out.name}"})
    chat = None
    if chat_input_name(flow):
        chat = {"input": chat_input_name(flow), "history": chat_history_name(flow), "output": chat_output_name(flow)}
    return {"kind": flow.kind, "inputs": inputs, "outputs": outputs, "nodes": nodes, "edges": edges, "chat": chat}


def _connection_params(path: Path) -> list[str]:
    """Parameters of a python tool annotated with a connection type (`conn: CustomConnection`), read from the
    source without importing it: a flow's own code never runs in the server."""
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return []
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.decorator_list:
            for arg in [*fn.args.args, *fn.args.kwonlyargs]:
                ann = arg.annotation
                label = ann.id if isinstance(ann, ast.Name) else ann.attr if isinstance(ann, ast.Attribute) else ""
                if label.endswith("Connection"):
                    found.append(arg.arg)
    return found
