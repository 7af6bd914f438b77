"""The exposition format: rendering, parsing what real endpoints serve, round trips, garbage."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamamon.prometheus.text import (
    ExpositionError,
    Family,
    Point,
    escape_label_value,
    format_value,
    parse,
    parse_float,
    render,
)

# What a vLLM server serves (abridged from its /metrics): colons in names, histograms, a counter.
VLLM = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="meta-llama/Llama-3-8B"} 3.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="meta-llama/Llama-3-8B"} 0.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="meta-llama/Llama-3-8B"} 12.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3-8B"} 15.0
vllm:time_to_first_token_seconds_count{model_name="meta-llama/Llama-3-8B"} 15.0
vllm:time_to_first_token_seconds_sum{model_name="meta-llama/Llama-3-8B"} 1.4
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="meta-llama/Llama-3-8B"} 27453.0
"""

# What prometheus_client serves as OpenMetrics: family named without _total, _created, exemplar, # EOF.
OPENMETRICS = """\
# HELP requests Requests served.
# TYPE requests counter
requests_total{path="/"} 4.0 # {trace_id="abc"} 1.0 1700000000.5
requests_created{path="/"} 1.7e+09
# HELP latency_seconds Latency.
# TYPE latency_seconds summary
latency_seconds{quantile="0.5"} 0.2
latency_seconds_count 3 1700000000.250
latency_seconds_sum 0.9
# UNIT latency_seconds seconds
# EOF
"""


def test_parse_vllm_groups_histogram_and_keeps_colons():
    families = {f.name: f for f in parse(VLLM)}
    assert list(families) == [
        "vllm:num_requests_running",
        "vllm:time_to_first_token_seconds",
        "vllm:generation_tokens_total",
    ]
    ttft = families["vllm:time_to_first_token_seconds"]
    assert ttft.type == "histogram"
    assert ttft.help == "Histogram of time to first token in seconds."
    assert [p.name for p in ttft.points] == [
        "vllm:time_to_first_token_seconds_" + s for s in ["bucket"] * 3 + ["count", "sum"]
    ]
    assert ttft.points[2].labels == (("le", "+Inf"), ("model_name", "meta-llama/Llama-3-8B"))
    assert families["vllm:generation_tokens_total"].points[0].value == 27453.0


def test_parse_openmetrics_created_exemplar_and_float_timestamps():
    families = {f.name: f for f in parse(OPENMETRICS)}
    assert list(families) == ["requests", "latency_seconds"]
    requests = families["requests"]
    assert requests.type == "counter"
    assert [(p.name, p.value, p.timestamp) for p in requests.points] == [
        ("requests_total", 4.0, None),
        ("requests_created", 1.7e9, None),
    ]
    summary = families["latency_seconds"]
    assert summary.type == "summary"
    assert [p.name for p in summary.points] == ["latency_seconds", "latency_seconds_count", "latency_seconds_sum"]
    assert summary.points[1].timestamp == 1700000000.25


def test_parse_special_values_timestamps_and_escapes():
    text = (
        "# HELP x Line one\\nline two, a \\\\ backslash, a \\t kept\n"
        "# TYPE x gauge\n"
        'x{a="q\\"uote",b="back\\\\slash",c="new\\nline",d="ünï ✓"} NaN 1700000000123\n'
        'x{a="2",} +Inf\n'
        "x\t-Inf  -5\n"
        '  x { a = "spaced" , b="1" } 1e3\n'
    )
    (family,) = parse(text)
    assert family.help == "Line one\nline two, a \\ backslash, a \\t kept"
    first, second, third, fourth = family.points
    assert dict(first.labels) == {"a": 'q"uote', "b": "back\\slash", "c": "new\nline", "d": "ünï ✓"}
    assert math.isnan(first.value)
    assert first.timestamp == 1700000000.123
    assert second.labels == (("a", "2"),)
    assert second.value == math.inf
    assert (third.value, third.timestamp) == (-math.inf, -0.005)
    assert fourth.labels == (("a", "spaced"), ("b", "1"))
    assert fourth.value == 1000.0


def test_parse_utf8_quoted_names_and_crlf():
    (family,) = parse('{"my.metric", "label.name"="v"} 2\r\n')
    assert family.name == "my.metric"
    assert family.points[0].labels == (("label.name", "v"),)


def test_untyped_and_interleaved_samples_join_their_family():
    families = parse('a 1\nb 2\na{x="1"} 3\n# a comment\n')
    assert [(f.name, f.type, len(f.points)) for f in families] == [("a", "untyped", 2), ("b", "untyped", 1)]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('x 1\nx{a="1} 2\n', 2, "expected a quoted label value"),
        ("x\n", 1, "missing value after x"),
        ("x 1 2 3\n", 1, "unexpected text after the value"),
        ("x one\n", 1, "invalid number 'one'"),
        ("x 1_000\n", 1, "invalid number"),
        ("x 1 1.5\n", 1, "invalid timestamp '1.5'"),
        ("# TYPE x flavour\n", 1, "unknown metric type 'flavour'"),
        ("# TYPE x gauge\n# TYPE x counter\n", 2, "second # TYPE for x"),
        ("# HELP 9x help\n", 1, "valid metric name"),
        ('x{a="1",a="2"} 1\n', 1, "label 'a' given twice"),
        ("x{a} 1\n", 1, "expected '=' after label 'a'"),
        ('x{a="1" b="2"} 1\n', 1, "expected ',' or '}'"),
        ("{} 1\n", 1, "expected a metric name"),
        ('x{="1"} 1\n', 1, "expected a label name"),
        ("x 1\n# EOF\ny 2\n", 3, "text after # EOF"),
        ("x 1\n\n\n\x00 1\n", 4, "expected a metric name"),
    ],
)
def test_garbage_raises_exposition_error_with_line(text, line, message):
    with pytest.raises(ExpositionError) as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"line {line}: ")


def test_format_value_is_go_syntax_and_round_trips():
    assert [format_value(v) for v in (math.nan, math.inf, -math.inf, 1, 0.1, 1e16)] == [
        "NaN",
        "+Inf",
        "-Inf",
        "1.0",
        "0.1",
        "1e+16",
    ]
    assert parse_float("+Inf") == math.inf
    assert parse_float("-inf") == -math.inf


def test_render_rejects_what_readers_would_reject():
    with pytest.raises(ValueError, match="invalid metric name"):
        render([Family("bad-name")])
    with pytest.raises(ValueError, match="given twice"):
        render([Family("a"), Family("a")])
    with pytest.raises(ValueError, match="does not belong"):
        render([Family("a", "gauge", "h", (Point("b", (), 1.0),))])
    with pytest.raises(ValueError, match="invalid label name"):
        render([Family("a", "gauge", "h", (Point("a", (("__x", "1"),), 1.0),))])
    with pytest.raises(ValueError, match="invalid metric type"):
        render([Family("a", "flavour")])
    assert render([]) == ""


def test_render_groups_help_type_and_escapes():
    text = render(
        [
            Family(
                "a_seconds",
                "histogram",
                "Help with \\ and\nnewline",
                (
                    Point("a_seconds_bucket", (("le", "+Inf"),), 2.0),
                    Point("a_seconds_sum", (), 0.5),
                    Point("a_seconds_count", (), 2.0),
                ),
            ),
            Family("b", "gauge", None, (Point("b", (("v", 'q"\\\n'),), 1.0, timestamp=1.5),)),
        ]
    )
    assert text == (
        "# HELP a_seconds Help with \\\\ and\\nnewline\n"
        "# TYPE a_seconds histogram\n"
        'a_seconds_bucket{le="+Inf"} 2.0\n'
        "a_seconds_sum 0.5\n"
        "a_seconds_count 2.0\n"
        "# TYPE b gauge\n"
        'b{v="q\\"\\\\\\n"} 1.0 1500\n'
    )
    assert escape_label_value('\\"\n') == '\\\\\\"\\n'


# --- Hypothesis ---------------------------------------------------------------------------------------------

_names = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from("abcxyzABC_"),
    st.text(alphabet="abcdefxyz_0189ABZ", max_size=12),
)
_label_names = _names.filter(lambda n: not n.startswith("__"))
# Any text: quotes, backslashes, newlines, \r, non-ASCII, control characters.
_label_values = st.text(max_size=30)
# HELP text loses leading blanks (they separate it from the name) and a final \r (CRLF tolerance).
_help = st.text(max_size=40).map(lambda t: t.lstrip(" \t").rstrip("\r"))
_values = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def _families(draw):
    names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    families = []
    for name in names:
        labelsets = draw(
            st.lists(
                st.dictionaries(_label_names, _label_values, max_size=4),
                max_size=4,
                unique_by=lambda d: tuple(sorted(d.items())),
            )
        )
        points = tuple(
            Point(name, tuple(sorted(labels.items())), draw(_values), draw(st.none() | st.integers(-(2**40), 2**40)))
            for labels in labelsets
        )
        points = tuple(
            Point(p.name, p.labels, p.value, None if p.timestamp is None else p.timestamp / 1000) for p in points
        )
        kind = draw(st.sampled_from(["gauge", "counter", "untyped"]))
        families.append(Family(name, kind, draw(st.none() | _help), points))
    return families


def _same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=150, deadline=None)
@given(_families())
def test_render_then_parse_round_trips(families):
    text = render(families)
    parsed = parse(text)
    # Indented lines take the general path instead of the one-regex fast path: both must agree.
    slow = parse("\n".join(" " + line for line in text.split("\n")))
    assert repr(slow) == repr(parsed)
    assert [(f.name, f.type, f.help) for f in parsed] == [(f.name, f.type, f.help) for f in families]
    for before, after in zip(families, parsed, strict=True):
        assert [(p.name, p.labels) for p in after.points] == [(p.name, p.labels) for p in before.points]
        for p, q in zip(before.points, after.points, strict=True):
            assert _same_value(p.value, q.value)
            assert p.timestamp == q.timestamp


_exposition_alphabet = st.sampled_from([*'abc_:{}="\\, \t\n#01.+-eEInfNa\r', "HELP", "TYPE", "EOF", "ü"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_exposition_alphabet, max_size=60).map("".join)))
def test_parser_raises_only_exposition_errors_on_garbage(text):
    error = None
    try:
        parse(text)
    except ExpositionError as exc:
        error = exc
    assert error is None or 1 <= error.line <= text.count("\n") + 1
