"""Find monitoring.yaml, read it keeping every key's line number, and expand ${VAR} references.

The loader knows YAML and files; what the keys mean is schema.py's business. Line numbers travel
with the values (a path -> line map) so every later mistake can be reported as ``file:line: key.path``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llamamon.errors import ConfigError

ENV_VAR = "LLAMAMON_CONFIG"
DEFAULT_NAME = "monitoring.yaml"

# A real monitoring.yaml has a few hundred values. Aliases (*a) repeat the node they name, so nine lines
# of nine aliases each expand to 9**9 values (the "billion laughs"): bound the expansion and the depth.
MAX_VALUES = 50_000
MAX_DEPTH = 64

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class UnsetVariable(str):
    """A string that referenced an unset ``${VAR}``.

    Why not fail at load time: recording must never fail because SLACK_WEBHOOK_URL is unset; only the
    code that needs the value (a channel about to send) turns this into an error.
    """

    variable: str

    def __new__(cls, text: str, variable: str) -> UnsetVariable:
        obj = super().__new__(cls, text)
        obj.variable = variable
        return obj


@dataclass(frozen=True, slots=True)
class RawConfig:
    data: dict[str, Any]
    lines: dict[str, int]
    source: Path | None


def find_config(path: str | os.PathLike[str] | None = None) -> Path | None:
    """``--config``, then ``$LLAMAMON_CONFIG``, then ``./monitoring.yaml``; None means built-in defaults."""
    if path is not None:
        chosen = Path(path)
        if not chosen.is_file():
            raise ConfigError(f"config file not found: {chosen}", path="--config")
        return chosen
    env = os.environ.get(ENV_VAR)
    if env:
        chosen = Path(env)
        if not chosen.is_file():
            raise ConfigError(f"config file not found: {chosen}", path=f"${ENV_VAR}")
        return chosen
    local = Path(DEFAULT_NAME)
    return local if local.is_file() else None


def read_config(path: Path | None) -> RawConfig:
    if path is None:
        return RawConfig({}, {}, None)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", file=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {column} (save the file as UTF-8)",
            file=str(path),
            line=line,
        ) from None
    return parse_config_text(text, str(path), source=path)


def parse_config_text(text: str, filename: str, source: Path | None = None) -> RawConfig:
    try:
        # Why the C loader where PyYAML has libyaml: composing the default config takes 2.6 ms instead of 18.
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = f" column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"YAML syntax error at{col}: {problem}", file=filename, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=filename) from None
    lines: dict[str, int] = {}
    if node is None:
        return RawConfig({}, lines, source)
    data = _to_python(node, "", lines, filename, yaml.constructor.SafeConstructor(), [MAX_VALUES], 0)
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of sections", file=filename, line=node.start_mark.line + 1)
    return RawConfig(data, lines, source)


def _to_python(
    node: yaml.Node,
    path: str,
    lines: dict[str, int],
    filename: str,
    constructor: yaml.constructor.SafeConstructor,
    budget: list[int],
    depth: int,
) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        what = f"expands to more than {MAX_VALUES} values" if budget[0] < 0 else f"nests deeper than {MAX_DEPTH} levels"
        raise ConfigError(
            f"the config {what} (YAML aliases like *a repeat what they refer to); refusing to read it",
            file=filename,
            line=node.start_mark.line + 1,
        )
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            child = f"{path}.{key}" if path else str(key)
            if key in out:
                raise ConfigError("duplicate key", file=filename, line=key_node.start_mark.line + 1, path=child)
            lines[child] = key_node.start_mark.line + 1
            out[str(key)] = _to_python(value_node, child, lines, filename, constructor, budget, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(item, f"{path}[{i}]", lines, filename, constructor, budget, depth + 1)
            for i, item in enumerate(node.value)
        ]
    value = _scalar(node, filename, constructor)
    if isinstance(value, str):
        return expand_vars(value)
    return value


def _scalar(node: yaml.ScalarNode, filename: str, constructor: yaml.constructor.SafeConstructor) -> Any:
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        # Why: tags the safe loader refuses (e.g. a bare "=" is YAML's "value" tag) are mistakes too.
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"YAML error: {problem}", file=filename, line=node.start_mark.line + 1) from None


def expand_vars(text: str, environ: dict[str, str] | None = None) -> str:
    """``${VAR}`` and ``${VAR:-default}``; an unset VAR without default yields an UnsetVariable."""
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            missing.append(name)
            return m.group(0)
        return value

    result = _VAR.sub(sub, text)
    return UnsetVariable(result, missing[0]) if missing else result
