"""The condition language: tokenize and parse ``gpu_utilization{gpu="0"} < 20% and p95(x, 5m) > 500ms``.

Our own recursive-descent parser into the syntax tree of ``llamamon.rules.tree`` (never eval/exec or an
expression library); every error is a RuleError pointing at the column, with the text and a caret. Pure:
no files, no clock. Evaluation lives in ``llamamon.rules.history`` and ``llamamon.rules.instant``, the
PromQL rendering in ``llamamon.prometheus.rules_export``.

Grammar, loosest binding first::

    expr    := and_ ("or" and_)*
    and_    := not_ (("and" | "unless") not_)*
    not_    := "not" not_ | cmp
    cmp     := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum     := prod (("+" | "-") prod)*
    prod    := unary (("*" | "/") unary)*
    unary   := "-" unary | primary
    primary := NUMBER[unit] | NAME "(" args ")" | NAME ["{" matchers "}"] | "(" expr ")" | agg
    agg     := AGGREGATION ("by" | "without") "(" [NAME ("," NAME)*] ")" "(" [NUMBER ","] expr ")"

An aggregation is PromQL's, across series at each instant (``quantile without (rank) (0.5, rate(step,
10m))``); its name is also a window function's (``avg(x, 5m)``), so the ``by``/``without`` clause, which
PromQL leaves optional, is required here.

Numbers with a unit (``500ms``, ``2GiB``, ``80%``) are converted to the unit the metric they are
compared with is stored in (``inference_latency > 500ms`` compares with 500, latency being stored in
milliseconds); next to a metric without a catalog unit they are in base units (seconds, bytes, ratio).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from llamamon import catalog, units
from llamamon.errors import RuleError
from llamamon.rules.tree import (
    AGGREGATIONS,
    COMPARISONS,
    KEYWORDS,
    SET_OPS,
    Aggregate,
    Binary,
    Call,
    Condition,
    Matcher,
    Node,
    Number,
    Selector,
    Unary,
    metric_names,
    selectors,
    unit_of,
)

# name -> (number of arguments, kind). "window": f(metric, duration); "quantile": f(q, metric, duration);
# "pNN": f(metric, duration) = quantile(NN/100, ...); "series": f(metric); "value": f(expr).
FUNCTIONS: dict[str, str] = {
    "avg": "window",
    "min": "window",
    "max": "window",
    "sum": "window",
    "count": "window",
    "rate": "window",
    "delta": "window",
    "increase": "window",
    "quantile": "quantile",
    "p50": "pNN",
    "p90": "pNN",
    "p95": "pNN",
    "p99": "pNN",
    "last": "series",
    "evals_since_best": "series",
    "abs": "value",
    "isnan": "value",
    "isinf": "value",
    "isfinite": "value",
}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:[A-Za-zµ%]+(?:\d+[A-Za-zµ]+)*)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op><=|>=|==|!=|=~|!~|[<>=+\-*/(){},])
    """,
    re.VERBOSE,
)
_NUMBER_SPLIT = re.compile(r"^((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(.*)$")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # number, name, string, op, end
    text: str
    pos: int  # 0-based offset


class _Place:
    """Where a condition text lives, to build RuleErrors that point at the column."""

    def __init__(self, text: str, file: str | None, line: int | None, path: str | None) -> None:
        self.text, self.file, self.line, self.path = text, file, line, path

    def error(self, pos: int, message: str, hint: str | None = None) -> RuleError:
        pos = max(0, min(pos, len(self.text)))
        shown = self.text.replace("\n", " ").replace("\t", " ")
        caret = " " * pos + "^"
        extra = f": {hint}" if hint else ""
        body = f"{message} at column {pos + 1}{extra}\n    {shown}\n    {caret}"
        return RuleError(body, file=self.file, line=self.line, path=self.path)


def tokenize(text: str, place: _Place | None = None) -> list[Token]:
    place = place or _Place(text, None, None, None)
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise place.error(pos, f"unexpected {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _number(tok: Token, place: _Place) -> Number:
    m = _NUMBER_SPLIT.match(tok.text)
    assert m is not None  # the tokenizer only yields numbers this regex splits
    num, unit = m.group(1), m.group(2)
    if not unit:
        return Number(float(num), None, tok.text, tok.pos)
    if re.search(r"\d", unit):  # compound duration such as 1h30m
        try:
            return Number(units.parse_duration(tok.text), "seconds", tok.text, tok.pos)
        except Exception:  # noqa: BLE001 - any parse failure is the same user mistake, reported at the column
            raise place.error(tok.pos, f"not a duration: {tok.text!r}") from None
    try:
        value, dim = units.parse_quantity(tok.text)
    except ValueError:
        known = ", ".join(sorted(units.suffixes()))
        raise place.error(tok.pos + len(num), f"unknown unit {unit!r} (known: {known})") from None
    return Number(value, dim, tok.text, tok.pos)


class _Parser:
    def __init__(self, text: str, place: _Place) -> None:
        self.place = place
        self.tokens = tokenize(text, place)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.tok
        return tok.kind in ("op", "name") and tok.text in texts

    def expect(self, text: str) -> Token:
        if not (self.tok.kind == "op" and self.tok.text == text):
            raise self.unexpected(f"expected {text!r}")
        return self.take()

    def unexpected(self, hint: str | None = None) -> RuleError:
        tok = self.tok
        what = "end of condition" if tok.kind == "end" else repr(tok.text)
        return self.place.error(tok.pos, f"unexpected {what}", hint)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise self.place.error(0, "empty condition")
        node = self.or_()
        if self.tok.kind != "end":
            raise self.unexpected()
        return node

    def chain(self, kind: str, ops: tuple[str, ...], operand: Callable[[], Node]) -> Node:
        """``operand (op operand)*`` for the operators ``ops`` (tokens of ``kind``), binding to the left."""
        node = operand()
        while self.tok.kind == kind and self.tok.text in ops:
            tok = self.take()
            node = Binary(tok.text, node, operand(), tok.pos)
        return node

    def or_(self) -> Node:
        return self.chain("name", ("or",), self.and_)

    def and_(self) -> Node:
        return self.chain("name", ("and", "unless"), self.not_)

    def not_(self) -> Node:
        if self.tok.kind == "name" and self.tok.text == "not":
            tok = self.take()
            return Unary("not", self.nested(self.not_), tok.pos)
        return self.cmp()

    def nested(self, fn: object) -> Node:
        # Why: a deeply nested text must be a RuleError, not a RecursionError.
        self.depth += 1
        if self.depth > 60:
            raise self.place.error(self.tok.pos, "condition nested too deeply")
        try:
            return fn()  # type: ignore[operator]
        finally:
            self.depth -= 1

    def cmp(self) -> Node:
        node = self.sum()
        if self.tok.kind == "op" and self.tok.text in COMPARISONS:
            tok = self.take()
            node = Binary(tok.text, node, self.sum(), tok.pos)
            if self.tok.kind == "op" and self.tok.text in COMPARISONS:
                raise self.unexpected("comparisons do not chain; join them with and")
        return node

    def sum(self) -> Node:
        return self.chain("op", ("+", "-"), self.prod)

    def prod(self) -> Node:
        return self.chain("op", ("*", "/"), self.unary)

    def unary(self) -> Node:
        if self.tok.kind == "op" and self.tok.text == "-":
            tok = self.take()
            operand = self.nested(self.unary)
            if isinstance(operand, Number):
                return Number(-operand.value, operand.dim, "-" + operand.text, tok.pos)
            return Unary("-", operand, tok.pos)
        return self.primary()

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind == "number":
            self.take()
            return _number(tok, self.place)
        if tok.kind == "op" and tok.text == "(":
            self.take()
            node = self.nested(self.or_)
            self.expect(")")
            return node
        if tok.kind == "name":
            if tok.text in KEYWORDS:
                raise self.unexpected("expected a metric name or a number")
            if tok.text.lower() in ("inf", "nan"):
                self.take()
                return Number(float(tok.text), None, tok.text, tok.pos)
            self.take()
            if tok.text in AGGREGATIONS and self.tok.kind == "name" and self.tok.text in ("by", "without"):
                return self.aggregate(tok)
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.call(tok)
            matchers: tuple[Matcher, ...] = ()
            if self.tok.kind == "op" and self.tok.text == "{":
                matchers = self.matchers()
            return Selector(tok.text, matchers, tok.pos)
        raise self.unexpected("expected a metric name, a number or '('")

    def call(self, name: Token) -> Node:
        if name.text not in FUNCTIONS:
            hint = catalog.suggest(name.text, tuple(FUNCTIONS))
            extra = f' (did you mean "{hint}"?)' if hint else f" (known: {', '.join(FUNCTIONS)})"
            raise self.place.error(name.pos, f"unknown function {name.text!r}{extra}")
        self.expect("(")
        args: list[Node] = []
        if not (self.tok.kind == "op" and self.tok.text == ")"):
            args.append(self.nested(self.or_))
            while self.tok.kind == "op" and self.tok.text == ",":
                self.take()
                args.append(self.nested(self.or_))
        self.expect(")")
        return _check_call(Call(name.text, tuple(args), name.pos), self.place)

    def aggregate(self, name: Token) -> Node:
        by = self.take().text == "by"
        self.expect("(")
        labels: list[str] = []
        while not (self.tok.kind == "op" and self.tok.text == ")"):
            if self.tok.kind != "name":
                raise self.unexpected("expected a label name")
            labels.append(self.take().text)
            if self.tok.kind == "op" and self.tok.text == ",":
                self.take()
            elif not (self.tok.kind == "op" and self.tok.text == ")"):
                raise self.unexpected("expected ',' or ')'")
        self.take()
        self.expect("(")
        q = 0.0
        if name.text == "quantile":
            qn = self.tok
            value = _number(self.take(), self.place) if qn.kind == "number" else None
            if value is None or value.dim is not None or not 0.0 <= value.value <= 1.0:
                raise self.place.error(qn.pos, "quantile by/without needs a number from 0 to 1 first")
            q = value.value
            self.expect(",")
        arg = self.nested(self.or_)
        self.expect(")")
        if not selectors(arg):
            raise self.place.error(name.pos, f"{name.text} {'by' if by else 'without'} needs a metric to aggregate")
        return Aggregate(name.text, by, tuple(labels), arg, name.pos, q)

    def matchers(self) -> tuple[Matcher, ...]:
        self.expect("{")
        out: list[Matcher] = []
        while not (self.tok.kind == "op" and self.tok.text == "}"):
            label = self.tok
            if label.kind != "name":
                raise self.unexpected("expected a label name")
            self.take()
            if not (self.tok.kind == "op" and self.tok.text in ("=", "!=", "=~", "!~")):
                raise self.unexpected("expected =, !=, =~ or !~")
            op = self.take().text
            value = self.tok
            if value.kind != "string":
                raise self.unexpected('expected a quoted label value such as "0"')
            self.take()
            text = _unquote(value.text)
            if op in ("=~", "!~"):
                try:
                    re.compile(text)
                except re.error as exc:
                    raise self.place.error(value.pos, f"bad regular expression ({exc})") from None
            out.append(Matcher(label.text, op, text))
            if self.tok.kind == "op" and self.tok.text == ",":
                self.take()
            elif not (self.tok.kind == "op" and self.tok.text == "}"):
                raise self.unexpected("expected ',' or '}'")
        self.take()
        return tuple(out)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _window(node: Node, call: Call, place: _Place) -> float:
    if not isinstance(node, Number) or node.dim not in (None, "seconds"):
        pos = getattr(node, "pos", call.pos)
        raise place.error(pos, f"{call.func}() needs a window duration such as 5m")
    if not node.value > 0 or node.value == float("inf"):
        raise place.error(node.pos, f"{call.func}() needs a window longer than 0")
    return node.value


def _check_call(call: Call, place: _Place) -> Call:
    kind = FUNCTIONS[call.func]
    want = {"window": 2, "quantile": 3, "pNN": 2, "series": 1, "value": 1}[kind]
    usage = {
        "window": f"{call.func}(metric, 5m)",
        "quantile": "quantile(0.95, metric, 5m)",
        "pNN": f"{call.func}(metric, 5m)",
        "series": f"{call.func}(metric)",
        "value": f"{call.func}(expression)",
    }[kind]
    if len(call.args) != want:
        raise place.error(call.pos, f"{call.func}() takes {want} argument{'s' if want > 1 else ''}: {usage}")
    if kind == "value":
        return call
    metric_arg = call.args[1] if kind == "quantile" else call.args[0]
    if not isinstance(metric_arg, Selector):
        pos = getattr(metric_arg, "pos", call.pos)
        raise place.error(pos, f"{call.func}() needs a metric name here: {usage}")
    if kind == "series":
        return call
    window = _window(call.args[-1], call, place)
    q = 0.0
    if kind == "pNN":
        q = int(call.func[1:]) / 100
    elif kind == "quantile":
        qn = call.args[0]
        if not isinstance(qn, Number) or qn.dim is not None or not 0.0 <= qn.value <= 1.0:
            raise place.error(getattr(qn, "pos", call.pos), "quantile() needs a number from 0 to 1 first")
        q = qn.value
    return replace(call, window=window, q=q)


def parse(
    text: str,
    *,
    file: str | None = None,
    line: int | None = None,
    path: str | None = None,
    aliases: dict[str, str] | None = None,
) -> Condition:
    """Parse and resolve a condition: aliases to stored names, unit literals to the metric's unit.

    Raises RuleError (and nothing else) for any text that is not a valid condition.
    """
    place = _Place(text, file, line, path)
    tree = _Parser(text, place).parse()
    if not selectors(tree):
        raise place.error(0, "a condition needs at least one metric")
    tree = _strip_units(_resolve(tree, aliases or {}, place))
    return Condition(text, tree, frozenset(metric_names(tree)))


def check_names(
    cond: Condition,
    known: set[str] | frozenset[str],
    *,
    file: str | None = None,
    line: int | None = None,
    path: str | None = None,
    unknown_hint: str = "",
) -> None:
    """Unknown metric name -> RuleError with a "did you mean" (``known``: stored names that count), else
    ``unknown_hint`` (where names may come from)."""
    place = _Place(cond.text, file, line, path)
    for sel in selectors(cond.tree):
        if sel.metric not in known and sel.name not in known:
            hint = catalog.suggest(sel.name, sorted(known))
            extra = f' (did you mean "{hint}"?)' if hint else (f" ({unknown_hint})" if unknown_hint else "")
            raise place.error(sel.pos, f"unknown metric {sel.name!r}{extra}")
        known_metric = catalog.get(sel.metric)
        histogram = known_metric is not None and known_metric.kind == "histogram"
        if histogram and any(m.label in ("quantile", "le") for m in sel.matchers):
            # Why an error: scraped histograms are stored as buckets, so such a selector never matches.
            raise place.error(
                sel.pos,
                f"{sel.name} is a histogram (buckets, not quantile series): write p99({sel.name}, 5m) or "
                f"quantile(0.99, {sel.name}, 5m) instead of a quantile or le label",
            )


def _dimension(unit: str) -> str:
    return catalog.UNITS[unit].prometheus_suffix if unit in catalog.UNITS else unit


def _convert(num: Number, partner: Node, place: _Place) -> Number:
    if num.dim is None:
        return num
    unit = unit_of(partner)
    if unit is None:
        return num  # base units next to a metric without a catalog unit (documented)
    dim = _dimension(unit)
    if dim != num.dim and not dim.startswith(num.dim + "_per_"):
        raise place.error(num.pos, f"{num.text} is in {num.dim} but the other side is in {unit}")
    return replace(num, value=units.unscale(num.value, catalog.UNITS[unit].to_base), dim=None)


def _resolve(node: Node, aliases: dict[str, str], place: _Place) -> Node:
    if isinstance(node, Selector):
        return replace(node, metric=catalog.canonical(node.name, aliases))
    if isinstance(node, Call):
        args = tuple(_resolve(a, aliases, place) for a in node.args)
        return replace(node, args=args)
    if isinstance(node, Aggregate):
        return replace(node, arg=_resolve(node.arg, aliases, place))
    if isinstance(node, Unary):
        if node.op == "not" and not selectors(node.operand):
            raise place.error(node.pos, "'not' needs a condition on a metric")
        return replace(node, operand=_resolve(node.operand, aliases, place))
    if isinstance(node, Binary):
        left = _resolve(node.left, aliases, place)
        right = _resolve(node.right, aliases, place)
        if node.op in ("+", "-", *COMPARISONS):
            if isinstance(right, Number):
                right = _convert(right, left, place)
            if isinstance(left, Number):
                left = _convert(left, right, place)
        elif node.op in SET_OPS:
            for side in (left, right):
                if not selectors(side):
                    where = side.pos if not isinstance(side, Binary) else node.pos
                    raise place.error(where, f"'{node.op}' joins conditions on metrics, not numbers")
        return replace(node, left=left, right=right)
    return node


def _strip_units(node: Node) -> Node:
    """After conversion every number is a plain value in the unit it is compared in."""
    if isinstance(node, Number):
        return replace(node, dim=None) if node.dim is not None else node
    if isinstance(node, Call):
        return replace(node, args=tuple(_strip_units(a) for a in node.args))
    if isinstance(node, Aggregate):
        return replace(node, arg=_strip_units(node.arg))
    if isinstance(node, Unary):
        return replace(node, operand=_strip_units(node.operand))
    if isinstance(node, Binary):
        return replace(node, left=_strip_units(node.left), right=_strip_units(node.right))
    return node
