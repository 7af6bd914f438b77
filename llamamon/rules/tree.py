"""The condition syntax tree: its node types, and what can be read off a tree (the metrics it selects,
the unit its values are in, its canonical text, the comparison it is about).

Why apart from the parser: both evaluators, the exporter and the built-in rules walk trees; none of them
parses text. The parser (``llamamon.rules.lang``) builds these nodes and nothing else does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from llamamon import catalog

COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
SET_OPS = ("and", "or", "unless")
KEYWORDS = ("and", "or", "unless", "not")
AGGREGATIONS = ("sum", "avg", "min", "max", "count", "quantile")


@dataclass(frozen=True, slots=True)
class Number:
    value: float
    dim: str | None  # "seconds", "bytes", "ratio" ... when written with a unit; value is then in base units
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str


@dataclass(frozen=True, slots=True)
class Selector:
    name: str  # as written
    matchers: tuple[Matcher, ...]
    pos: int
    metric: str = ""  # canonical name (aliases resolved) once resolved


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Node, ...]
    pos: int
    window: float = 0.0  # seconds, for window functions
    q: float = 0.0  # for quantile / pNN


@dataclass(frozen=True, slots=True)
class Aggregate:
    """An aggregation across series at each instant, PromQL's ``quantile without (rank) (0.5, expr)``:
    ``by`` keeps only ``labels``, ``without`` drops them; series whose other labels agree form one group."""

    op: str  # one of AGGREGATIONS
    by: bool  # True: by (labels); False: without (labels)
    labels: tuple[str, ...]
    arg: Node
    pos: int
    q: float = 0.0  # for quantile


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-" or "not"
    operand: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Node
    right: Node
    pos: int


Node = Number | Selector | Call | Aggregate | Unary | Binary


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed, resolved condition and where it came from (for messages)."""

    text: str
    tree: Node
    metrics: frozenset[str] = field(default_factory=frozenset)


def selectors(node: Node) -> list[Selector]:
    if isinstance(node, Selector):
        return [node]
    if isinstance(node, Call):
        return [s for a in node.args for s in selectors(a)]
    if isinstance(node, Aggregate):
        return selectors(node.arg)
    if isinstance(node, Unary):
        return selectors(node.operand)
    if isinstance(node, Binary):
        return selectors(node.left) + selectors(node.right)
    return []


def subtrees(node: Node) -> Iterator[Node]:
    """Every node of a condition tree, the node itself first."""
    yield node
    if isinstance(node, Call):
        for arg in node.args:
            yield from subtrees(arg)
    elif isinstance(node, Aggregate):
        yield from subtrees(node.arg)
    elif isinstance(node, Unary):
        yield from subtrees(node.operand)
    elif isinstance(node, Binary):
        yield from subtrees(node.left)
        yield from subtrees(node.right)


def metric_names(node: Node) -> set[str]:
    return {s.metric for s in selectors(node)}


def unit_of(node: Node) -> str | None:
    """The catalog unit an expression's values are in (None: unknown or a plain number)."""
    if isinstance(node, Selector):
        metric = catalog.BY_NAME.get(node.metric)
        return metric.unit if metric is not None and metric.unit else None
    if isinstance(node, Call):
        if node.func in ("count", "evals_since_best", "isnan", "isinf", "isfinite"):
            return None if node.func in ("count", "evals_since_best") else unit_of(node.args[0])
        return unit_of(node.args[1] if node.func == "quantile" else node.args[0])
    if isinstance(node, Aggregate):
        return None if node.op == "count" else unit_of(node.arg)
    if isinstance(node, Unary):
        return unit_of(node.operand) if node.op == "-" else None
    if isinstance(node, Binary):
        if node.op in ("*", "/"):
            # Why: scaling by a plain number keeps the unit (latency * 2 is still milliseconds).
            if isinstance(node.right, Number):
                return unit_of(node.left)
            if isinstance(node.left, Number) and node.op == "*":
                return unit_of(node.right)
            return None
        if node.op in ("or",):
            return unit_of(node.left) or unit_of(node.right)
        return unit_of(node.left) if not isinstance(node.left, Number) else unit_of(node.right)
    return None


def to_base(node: Node) -> float:
    """Factor from an expression's stored unit to base units (ms -> s is 1e-3); 1 where unknown."""
    unit = unit_of(node)
    return catalog.UNITS[unit].to_base if unit in catalog.UNITS else 1.0


def render(node: Node) -> str:
    """Canonical text of a (resolved) tree, fully parenthesised; for listings and tests."""
    if isinstance(node, Number):
        return _num(node.value)
    if isinstance(node, Selector):
        inner = ", ".join(f'{m.label}{m.op}"{_escape(m.value)}"' for m in node.matchers)
        return node.name + (f"{{{inner}}}" if node.matchers else "")
    if isinstance(node, Call):
        args = [render(a) for a in node.args]
        if node.window:
            args[-1] = duration_text(node.window)
        return f"{node.func}({', '.join(args)})"
    if isinstance(node, Aggregate):
        return aggregate_text(node, render(node.arg))
    if isinstance(node, Unary):
        return f"not {render(node.operand)}" if node.op == "not" else f"-{render(node.operand)}"
    return f"({render(node.left)} {node.op} {render(node.right)})"


def aggregate_text(node: Aggregate, arg: str) -> str:
    """``quantile without (rank) (0.5, arg)``: the aggregation's own text around its argument's (the
    language's and PromQL's spelling are the same)."""
    q = f"{_num(node.q)}, " if node.op == "quantile" else ""
    return f"{node.op} {'by' if node.by else 'without'} ({', '.join(node.labels)}) ({q}{arg})"


def duration_text(seconds: float) -> str:
    """Seconds as a Prometheus duration: 300 -> "5m", 5400 -> "1h30m", 0.5 -> "500ms"."""
    ms = round(seconds * 1000)
    out = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out += f"{n}{unit}"
    return out or "0s"


def _num(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value) if not float(value).is_integer() or abs(value) >= 1e16 else str(int(value))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def top_comparison(node: Node) -> str | None:
    """The comparison a condition is about (">" for "x > 5 and y"), to tell peaks from troughs."""
    if isinstance(node, Binary):
        if node.op in COMPARISONS:
            return node.op
        if node.op in SET_OPS:
            return top_comparison(node.left)
    if isinstance(node, Unary) and node.op == "not":
        inner = top_comparison(node.operand)
        flip = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}
        return flip.get(inner or "", inner)
    return None
