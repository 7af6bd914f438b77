"""The layers' import rules, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llamamon"

LEAF = (
    "llamamon.errors",
    "llamamon.units",
    "llamamon.catalog",
    "llamamon.samples",
    "llamamon.severity",
    "llamamon.fsutil",
    "llamamon.masking",
    "llamamon.stragglers",
    "llamamon.gpu_peaks",
)
# What runs inside the user's job (``import llamamon``, ``llamamon.log``, the monitors, the framework
# integrations): the engine's layers never import it, and it reaches the engine only through the store's
# journal and the run metadata.
JOB_SIDE = (
    "llamamon.api",
    "llamamon.log_encoding",
    "llamamon.log_destination",
    "llamamon.monitors",
    "llamamon.integrations",
)
API = ("llamamon.api", "llamamon.log_encoding", "llamamon.log_destination")
LAYERS = (
    "llamamon.config",
    "llamamon.collectors",
    "llamamon.store",
    "llamamon.prometheus",
    "llamamon.rules",
    "llamamon.channels",
    "llamamon.report",
    "llamamon.runtime",
    "llamamon.cli",
    *JOB_SIDE,
)
ENGINE = tuple(layer for layer in LAYERS if layer not in JOB_SIDE and layer != "llamamon.cli")


def only(*may: str) -> tuple[str, ...]:
    """Every layer but these (and the layer itself) is off-limits."""
    return tuple(layer for layer in LAYERS if layer not in may)


FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{leaf: ("llamamon.",) for leaf in LEAF},
    "llamamon.config": only(),
    "llamamon.collectors": only("llamamon.config"),
    "llamamon.store": only("llamamon.config"),
    "llamamon.prometheus": only("llamamon.config", "llamamon.rules"),
    "llamamon.rules": only("llamamon.config"),
    "llamamon.channels": only("llamamon.config"),
    "llamamon.report": only("llamamon.config", "llamamon.store", "llamamon.prometheus", "llamamon.rules"),
    "llamamon.runtime": only(*ENGINE),
    **{module: only("llamamon.config", "llamamon.store", *API) for module in API},
    "llamamon.monitors": only("llamamon.config", "llamamon.collectors", *API),
    # A framework callback drives the public API and the monitors, nothing deeper.
    "llamamon.integrations": ("llamamon.",),
    # The CLI drives the engine; what runs inside the job is not its business.
    "llamamon.cli": only(*ENGINE),
}
# Modules a layer may use although its package is otherwise off-limits.
ALLOWED_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    **{leaf: LEAF for leaf in LEAF},
    "llamamon.collectors": ("llamamon.prometheus.text",),  # the exposition parser, for scrapes
    "llamamon.report": ("llamamon.store.reader", "llamamon.store.runs", "llamamon.store"),
    # The job and its recorder agree on where the job may say that it logs what it prints.
    **{module: ("llamamon.runtime.output_claim",) for module in API},
    "llamamon.integrations": (*LEAF, "llamamon.api", "llamamon.monitors"),
}
# ``from llamamon import log`` imports what the package loads lazily (llamamon/__init__.py's _LAZY).
LAZY_NAMES = {f"llamamon.{name}": module for name, module in __import__("llamamon")._LAZY.items()}
# Only this module may import pynvml.
PYNVML_OWNER = "llamamon.collectors._nvml"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_layer_imports(path):
    module = _module_name(path)
    rules = [
        (layer, banned) for layer, banned in FORBIDDEN.items() if module == layer or module.startswith(layer + ".")
    ]
    for name in _imports(path):
        name = LAZY_NAMES.get(name, name)
        if name == "pynvml" or name.startswith("pynvml."):
            assert module == PYNVML_OWNER, f"{module} imports pynvml; only {PYNVML_OWNER} may"
        for layer, banned in rules:
            allowed = ALLOWED_EXCEPTIONS.get(layer, ())
            if any(name == a or name.startswith(a + ".") for a in allowed):
                continue
            for prefix in banned:
                hit = (
                    name.startswith(prefix) if prefix.endswith(".") else name == prefix or name.startswith(prefix + ".")
                )
                if hit and not name.startswith(layer):
                    pytest.fail(f"{module} imports {name}, which the {layer} layer must not import")


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The llamamon modules ``path`` imports when it runs: module-level and inside functions alike (a lazy
    import is still a dependency, only a later one); not under ``if TYPE_CHECKING:``, which never runs.
    ``from package import name`` counts as importing ``package.name`` when that is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit_node(other)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found & modules


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_among_llamamon_modules():
    modules = {_module_name(p): p for p in MODULES}
    graph = {name: _runtime_imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_sees_function_level_imports_and_not_type_checking_ones(tmp_path):
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.b\n"
        "def f():\n    from x import a\n    from x.c import name\n"
    )
    assert _runtime_imports(probe, {"x", "x.a", "x.b", "x.c"}) == {"x.a", "x.c"}


LAYOUT_OWNER = "llamamon.store.layout"
# The metrics folder's own folder names (store/layout.py draws the whole layout).
FOLDER_NAMES = {"_journal", "runs", "_compact", "alerts", "prometheus"}


def _folder_name(node: ast.AST) -> str | None:
    """The folder name a path expression starts from or joins: ``x / "alerts"``, ``Path("alerts") / x``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Path" and node.args:
        node = node.args[0]
    if isinstance(node, ast.Constant) and node.value in FOLDER_NAMES:
        return str(node.value)
    return None


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_only_the_layout_joins_the_metrics_folders_names(path):
    if _module_name(path) == LAYOUT_OWNER:
        return
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                name = _folder_name(side)
                if name is not None:
                    pytest.fail(f"{_module_name(path)}:{node.lineno} builds a path with {name!r}: use store.layout")


# The rules' model (what a rule is, how it is written and templated, its alert states) is apart from the
# two evaluators: the CLI, the exporter and the channels read rules without loading either, and polars
# stays out of anything the live path imports for a rule's shape.
RULE_MODEL = ("llamamon.rules.model", "llamamon.rules.lang", "llamamon.rules.tree", "llamamon.rules.template")
EVALUATORS = ("llamamon.rules.history", "llamamon.rules.instant", "llamamon.rules.promql", "polars")


@pytest.mark.parametrize("module", RULE_MODEL)
def test_the_rule_model_imports_no_evaluator(module):
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    for name in _imports(path):
        assert not any(name == e or name.startswith(e) for e in EVALUATORS), f"{module} imports {name}"
