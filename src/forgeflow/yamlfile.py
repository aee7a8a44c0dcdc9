"""YAML from users' files (flow.dag.yaml, flow.flex.yaml, prompty front matter, connection, job and MLmodel
files), read one safe way: plain data only, nesting bounded, and aliases refused once expanding them would add
more than MAX_ALIAS_VALUES values. A "billion laughs" file is a few hundred bytes of anchors (`&a`) and aliases
(`*a`) that expand to gigabytes the moment anything walks, prints or serialises the result.
"""

from __future__ import annotations

from typing import Any

import yaml

from forgeflow.errors import InvalidInput

MAX_ALIAS_VALUES = 10_000
# libyaml's parser refuses nesting past 1000 levels; the pure-Python one would recurse until RecursionError.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, where: str, *, field: str | None = None) -> Any:
    """Parse YAML text, or raise InvalidInput that names `where` (a file, or a part of one) and `field`."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        extra = _alias_values(node)
        if extra > MAX_ALIAS_VALUES:
            raise InvalidInput(f"{where}: its aliases (*name) expand to {extra:,} more values, over the limit of "
                               f"{MAX_ALIAS_VALUES:,}; write the values out or use fewer aliases", field=field)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where}: not valid YAML: {exc}", field=field) from None
    except RecursionError:
        raise InvalidInput(f"{where}: not valid YAML: nested too deeply", field=field) from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _alias_values(root: yaml.Node) -> int:
    """How many values aliases add when the document is expanded into a tree (0 without aliases).

    An alias reuses its anchor's node, so the composed document is a graph: a node's expanded size counts a
    shared child once per use. A recursive alias (an anchor used inside itself) never ends and is refused.
    """
    sizes: dict[int, int] = {}
    path = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, pending = stack[-1]
        child = next(pending, None)
        if child is None:
            stack.pop()
            path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
        elif id(child) in path:
            mark = child.start_mark
            raise yaml.YAMLError(f"an alias refers to the value that holds it (line {mark.line + 1}): "
                                 "a recursive value has no end")
        elif id(child) not in sizes:
            path.add(id(child))
            stack.append((child, iter(_children(child))))
    return sizes[id(root)] - len(sizes)
