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
)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{leaf: ("llamamon.",) for leaf in LEAF},
    "llamamon.config": (
        "llamamon.collectors",
        "llamamon.store",
        "llamamon.rules",
        "llamamon.channels",
        "llamamon.report",
        "llamamon.runtime",
        "llamamon.cli",
        "llamamon.prometheus",
    ),
    "llamamon.collectors": (
        "llamamon.store",
        "llamamon.rules",
        "llamamon.channels",
        "llamamon.report",
        "llamamon.runtime",
        "llamamon.cli",
    ),
    "llamamon.store": (
        "llamamon.collectors",
        "llamamon.rules",
        "llamamon.channels",
        "llamamon.report",
        "llamamon.runtime",
        "llamamon.cli",
    ),
    "llamamon.prometheus": (
        "llamamon.store",
        "llamamon.collectors",
        "llamamon.channels",
        "llamamon.report",
        "llamamon.runtime",
        "llamamon.cli",
    ),
    "llamamon.rules": (
        "llamamon.store",
        "llamamon.collectors",
        "llamamon.channels",
        "llamamon.report",
        "llamamon.runtime",
        "llamamon.cli",
    ),
    "llamamon.channels": (
        "llamamon.store",
        "llamamon.collectors",
        "llamamon.rules",
        "llamamon.report",
        "llamamon.runtime",
        "llamamon.cli",
    ),
    "llamamon.report": ("llamamon.collectors", "llamamon.channels", "llamamon.runtime", "llamamon.cli"),
    "llamamon.runtime": ("llamamon.cli", "llamamon.report"),
}
# Modules a layer may use although its package is otherwise off-limits.
ALLOWED_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    **{leaf: LEAF for leaf in LEAF},
    "llamamon.collectors": ("llamamon.prometheus.text",),
    "llamamon.report": ("llamamon.store.reader", "llamamon.store.runs", "llamamon.store"),
}
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
