"""A rollout's `promote_if`: a small boolean expression over the canary's live metrics, read with `ast` and walked
over a whitelist (and, or, not, comparisons, numbers, + - * /, parentheses, names), never evaluated by Python.

    error_rate < 0.01 and p95_latency_ms < 1.2 * blue and judge >= blue

A metric's name is the canary's value over the step's window. A deployment's name is that deployment's value of
the metric on the other side of its comparison, over the same window (`blue` above is blue's p95 in the second
comparison and blue's judge score in the third); a name with `-` is written with `_` (`blue_2` for blue-2).

Missing data is unknown, never a pass: a comparison with an unknown side (no requests, no judged answer, a deployment
deleted since, arithmetic past the float range) is unknown, and unknown stays unknown through `not`, `and` and `or`
(Kleene's three-valued logic: `x and unknown` is false only when x is false, `x or unknown` true only when x is
true); a clause that comes out unknown fails the check. Constants are bounded and the expression's size and depth
limited when it is read, so evaluating a checked condition cannot raise.
"""

from __future__ import annotations

import ast
import keyword
import math
import operator
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from forgeflow.errors import InvalidInput

METRICS = ("error_rate", "requests", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "ttft_p95_ms", "judge")
# Metrics checked at every poll within a step, not only at its end: a canary failing requests is rolled back early.
EARLY = frozenset({"error_rate"})
MAX_LENGTH = 1000
MAX_NODES = 400  # of the parsed tree: 1000 characters of sensible condition stay far below
MAX_DEPTH = 40  # nesting of the parsed tree, checked before anything walks it recursively
MAX_CONSTANT = 1e12  # a number in a condition is at most this big (a ratio, milliseconds, a count)
FIELD = "promote_if"

_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

Figures = dict[str, dict[str, float | None]]  # deployment -> metric -> value over the window (None: unknown)


@dataclass
class Clause:
    """One of the condition's top-level `and` terms, as written."""

    text: str
    node: ast.expr
    metrics: set[str] = field(default_factory=set)
    deployments: set[str] = field(default_factory=set)


class Condition:
    """A checked `promote_if`: `evaluate` it on a window's figures."""

    def __init__(self, text: str, tree: ast.Expression, names: dict[int, str], clauses: list[Clause]) -> None:
        self.text = text
        self._tree = tree
        self._names = names  # id(ast.Name) -> the deployment it stands for (absent: a metric)
        self.clauses = clauses

    @property
    def metrics(self) -> set[str]:
        return set().union(*(c.metrics for c in self.clauses))

    @property
    def deployments(self) -> set[str]:
        return set().union(*(c.deployments for c in self.clauses))

    def evaluate(self, figures: Figures, canary: str) -> tuple[bool, list[dict]]:
        """Whether the condition holds (true, not unknown), and each top-level clause with its outcome and the values
        it read."""
        results = []
        for clause in self.clauses:
            seen: dict[str, float | None] = {}
            ok = self._value(clause.node, figures, canary, None, seen) is True
            results.append({"clause": clause.text, "passed": ok, "values": seen})
        return all(r["passed"] for r in results), results

    def early_breach(self, figures: Figures, canary: str) -> list[dict]:
        """The clauses checked continuously (of the top-level `and`, those over error_rate alone, naming no other
        deployment) that are false already (an unknown one may still come out true)."""
        body = self._tree.body
        if isinstance(body, ast.BoolOp) and isinstance(body.op, ast.Or):
            return []  # another term may still hold
        failed = []
        for clause in self.clauses:
            if clause.metrics <= EARLY and clause.metrics and not clause.deployments:
                seen: dict[str, float | None] = {}
                if self._value(clause.node, figures, canary, None, seen) is False:
                    failed.append({"clause": clause.text, "passed": False, "values": seen})
        return failed

    def _value(self, node: ast.expr, figures: Figures, canary: str, metric: str | None,
               seen: dict[str, float | None]):
        """A node's value: a finite float or None (unknown) for numbers, True, False or None for conditions."""
        if isinstance(node, ast.BoolOp):
            values = [self._value(v, figures, canary, metric, seen) for v in node.values]  # all read, for `seen`
            decisive = isinstance(node.op, ast.Or)  # True decides an or, False an and
            if decisive in values:
                return decisive
            return None if None in values else not decisive
        if isinstance(node, ast.UnaryOp):
            inner = self._value(node.operand, figures, canary, metric, seen)
            if inner is None:
                return None
            if isinstance(node.op, ast.Not):
                return not inner
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.Compare):
            metric = _metric_of(node)
            left = self._value(node.left, figures, canary, metric, seen)
            result: bool | None = True
            for op, right_node in zip(node.ops, node.comparators):
                right = self._value(right_node, figures, canary, metric, seen)
                if left is None or right is None:
                    result = None if result is not False else False
                elif not _COMPARE[type(op)](left, right):
                    result = False
                left = right
            return result
        if isinstance(node, ast.BinOp):
            a = self._value(node.left, figures, canary, metric, seen)
            b = self._value(node.right, figures, canary, metric, seen)
            if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
                return None
            return _finite(_ARITH[type(node.op)], a, b)
        if isinstance(node, ast.Constant):
            return float(node.value)
        assert isinstance(node, ast.Name)
        deployment = self._names.get(id(node))
        if deployment is None:
            value = _number(figures.get(canary, {}).get(node.id))
            seen[node.id] = value
        else:
            assert metric is not None
            value = _number(figures.get(deployment, {}).get(metric))
            seen[f"{deployment}.{metric}"] = value
        return value


def _finite(op, a: float, b: float) -> float | None:
    """a op b, or None (unknown) past the float range."""
    try:
        value = op(a, b)
    except (OverflowError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _number(value) -> float | None:
    """A published figure as a finite float; anything else (None, a stray value) is unknown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def parse_condition(text: str, deployments: Collection[str], canary: str) -> Condition:
    """`promote_if` checked against the endpoint's deployments; InvalidInput naming promote_if, the column and
    what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("promote_if is empty: give a condition such as \"error_rate<0.01 and "
                           "p95_latency_ms<1.2*blue\"", field=FIELD)
    if len(text) > MAX_LENGTH:
        raise InvalidInput(f"promote_if is {len(text)} characters long: at most {MAX_LENGTH}", field=FIELD)
    source = " ".join(text.split())  # one line: a newline would end the expression
    if "\x00" in source:
        raise InvalidInput("promote_if cannot hold a NUL character (\\x00)", field=FIELD)
    try:
        return _parse(source, deployments, canary)
    except RecursionError:  # _limits keeps a tree this deep from being walked; this is the last guard
        raise InvalidInput(f"promote_if is nested too deeply: at most {MAX_DEPTH} levels", field=FIELD) from None


def _parse(source: str, deployments: Collection[str], canary: str) -> Condition:
    by_name = {d.replace("-", "_"): d for d in deployments}
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        clash = sorted(n for n in by_name if keyword.iskeyword(n) and re.search(rf"\b{n}\b", source))
        hint = (f"; deployment {by_name[clash[0]]!r} has a name Python reads as a keyword, so promote_if cannot name "
                "it: compare with another deployment, or give it another name" if clash else "")
        raise InvalidInput(f"promote_if is not a condition: {e.msg} at column {e.offset or 1} of {source!r}{hint}",
                           field=FIELD) from None
    except (ValueError, RecursionError, MemoryError) as e:  # a nesting too deep, a numeral too long
        raise InvalidInput(f"promote_if cannot be read: {type(e).__name__}: {e}"[:300], field=FIELD) from None
    _limits(tree)
    names: dict[int, str] = {}
    checker = _Checker(source, by_name, names)
    if checker.kind(tree.body) != "bool":
        raise InvalidInput(f"promote_if must be a comparison or several joined by and/or (such as error_rate<0.01), "
                           f"got {source!r}", field=FIELD)
    body = tree.body
    terms = body.values if isinstance(body, ast.BoolOp) and isinstance(body.op, ast.And) else [body]
    clauses = []
    for term in terms:
        found = [n for n in ast.walk(term) if isinstance(n, ast.Name)]
        clauses.append(Clause(ast.get_source_segment(source, term) or ast.unparse(term), term,
                              {n.id for n in found if id(n) not in names}, {names[id(n)] for n in found
                                                                            if id(n) in names}))
    return Condition(source, tree, names, clauses)


def _limits(tree: ast.Expression) -> None:
    """The tree's size and depth within bounds, measured without recursion (before anything recurses over it)."""
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise InvalidInput(f"promote_if has more than {MAX_NODES} parts: write a shorter condition", field=FIELD)
        if depth > MAX_DEPTH:
            raise InvalidInput(f"promote_if is nested too deeply: at most {MAX_DEPTH} levels (of parentheses, signs "
                               "and operators)", field=FIELD)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _metric_of(node: ast.Compare) -> str | None:
    """The one metric a comparison names (what a deployment's name in it stands for)."""
    found = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in METRICS}
    return next(iter(found)) if len(found) == 1 else None


class _Checker:
    """Walks the tree over the whitelist; `kind` is "bool" or "num" for each node, or a 400 naming the column."""

    def __init__(self, source: str, by_name: dict[str, str], names: dict[int, str]) -> None:
        self.source = source
        self.by_name = by_name
        self.names = names
        self.metric: str | None = None  # the metric of the comparison being read

    def fail(self, node: ast.AST, what: str) -> InvalidInput:
        col = getattr(node, "col_offset", 0) + 1
        return InvalidInput(f"promote_if, column {col}: {what} (in {self.source!r})", field=FIELD)

    def kind(self, node: ast.expr) -> str:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                if self.kind(value) != "bool":
                    raise self.fail(value, "and/or join comparisons, not values: compare it (error_rate<0.01)")
            return "bool"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            if self.kind(node.operand) != "bool":
                raise self.fail(node, "not takes a comparison")
            return "bool"
        if isinstance(node, ast.Compare):
            if self.metric is not None:
                raise self.fail(node, "a comparison inside a comparison")
            found = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in METRICS}
            self.metric = next(iter(found)) if len(found) == 1 else ""
            try:
                for op in node.ops:
                    if type(op) not in _COMPARE:
                        raise self.fail(node, f"{type(op).__name__} is not a comparison it takes (< <= > >= == !=)")
                for side in (node.left, *node.comparators):
                    if self.kind(side) != "num":
                        raise self.fail(side, "a comparison's sides are numbers, metrics or deployments")
                if not found:
                    raise self.fail(node, "a comparison names no metric, so it says nothing about the deployment: "
                                          f"compare a metric ({', '.join(METRICS)})")
            finally:
                self.metric = None
            return "bool"
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _ARITH:
                raise self.fail(node, f"{type(node.op).__name__} is not allowed: use + - * / and parentheses")
            if self.kind(node.left) != "num" or self.kind(node.right) != "num":
                raise self.fail(node, "arithmetic takes numbers, metrics or deployments")
            return "num"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            if self.kind(node.operand) != "num":
                raise self.fail(node, "a sign takes a number")
            return "num"
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise self.fail(node, f"{node.value!r} is not a number")
            if not (isinstance(node.value, int) and abs(node.value) <= MAX_CONSTANT
                    or isinstance(node.value, float) and math.isfinite(node.value) and abs(node.value) <= MAX_CONSTANT):
                raise self.fail(node, f"a number is at most {MAX_CONSTANT:g}")
            return "num"
        if isinstance(node, ast.Name):
            return self._name(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed: use metrics, deployments, numbers, "
                              "+ - * /, comparisons, and, or, not, parentheses")

    def _name(self, node: ast.Name) -> str:
        if node.id in METRICS:
            if node.id in self.by_name:
                raise self.fail(node, f"{node.id!r} is both a metric and a deployment of the endpoint, so promote_if "
                                      "cannot tell which it means: compare with another deployment, or give the "
                                      "deployment another name")
            if self.metric is None:
                raise self.fail(node, f"{node.id} must be compared (such as {node.id}<0.01)")
            return "num"
        deployment = self.by_name.get(node.id)
        if deployment is None:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise self.fail(node, f"unknown name {node.id!r}: use a metric ({', '.join(METRICS)}) or a deployment "
                                  f"of the endpoint ({known})")
        if not self.metric:
            raise self.fail(node, f"deployment {deployment!r} stands for its value of the metric it is compared "
                                  "with: name exactly one metric in that comparison (p95_latency_ms<1.2*blue)")
        self.names[id(node)] = deployment
        return "num"
