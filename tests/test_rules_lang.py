"""The condition language: what parses to what, what fails where, and that nothing but RuleError escapes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamamon.errors import RuleError
from llamamon.rules import lang, tree


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("memory_usage > 0.9", "(memory_usage > 0.9)"),
        ("memory_usage > 80%", "(memory_usage > 0.8)"),
        # stored in milliseconds: 500ms compares as 500, 1s as 1000
        ("inference_latency > 500ms", "(inference_latency > 500)"),
        ("p95(inference_latency, 5m) > 1s", "(p95(inference_latency, 5m) > 1000)"),
        ("gpu_memory_used > 2GiB", "(gpu_memory_used > 2147483648)"),
        ("gpu_sm_clock < 1GHz", "(gpu_sm_clock < 1000)"),
        ("learning_rate < 1e-6", "(learning_rate < 1e-06)"),
        # a job's own metric has no catalog unit: unit literals are base units
        ("my_step_time > 250ms", "(my_step_time > 0.25)"),
        (
            'gpu_utilization{gpu="0", host!="a", run=~"2026.*"} < 0.2',
            '(gpu_utilization{gpu="0", host!="a", run=~"2026.*"} < 0.2)',
        ),
        ("a + b * -c / 2 >= 3", "((a + ((b * -c) / 2)) >= 3)"),
        ("not x > 1 and y < 2 or z == 3", "((not (x > 1) and (y < 2)) or (z == 3))"),
        ("x > 1 unless y > 2", "((x > 1) unless (y > 2))"),
        ("quantile(0.9, x, 1h30m) > 2", "(quantile(0.9, x, 1h30m) > 2)"),
        ("rate(gpu_energy, 1m) > 300", "(rate(gpu_energy, 1m) > 300)"),
        ("val_loss > 2", "(val_loss > 2)"),
        ("not isfinite(loss)", "not isfinite(loss)"),
        ("x > inf or x != NaN", "((x > inf) or (x != NaN))"),
        # aggregations across series, PromQL's spelling (by/without required: avg(x, 5m) is a window)
        (
            "quantile without (rank, host) (0.5, rate(step, 10m)) / rate(step, 10m) > 1.25",
            "((quantile without (rank, host) (0.5, rate(step, 10m)) / rate(step, 10m)) > 1.25)",
        ),
        ("sum by (host) (gpu_power) > 1000", "(sum by (host) (gpu_power) > 1000)"),
        ("count without () (x > 1) >= 3", "(count without () ((x > 1)) >= 3)"),
        ("avg by(gpu,)(x) < avg(x, 5m)", "(avg by (gpu) (x) < avg(x, 5m))"),
        # the aggregate keeps its argument's unit: 1s next to latency (ms) is 1000
        ("max by (model) (p95(inference_latency, 5m)) > 1s", "(max by (model) (p95(inference_latency, 5m)) > 1000)"),
    ],
)
def test_parse_and_render(text: str, canonical: str) -> None:
    assert tree.render(lang.parse(text).tree) == canonical


def test_aliases_resolve_to_stored_names() -> None:
    cond = lang.parse("val_loss > 2 and lr < 1e-6 and tput > 1", aliases={"tput": "tokens_per_second"})
    assert cond.metrics == {"validation_loss", "learning_rate", "tokens_per_second"}


def _first_line(exc: pytest.ExceptionInfo[RuleError]) -> str:
    return str(exc.value).splitlines()[0]


def test_error_points_at_the_column_with_caret() -> None:
    with pytest.raises(RuleError) as exc:
        lang.parse("memory_usage >> 0.9", file="monitoring.yaml", line=31, path="alerts.rules.memory_usage.condition")
    lines = str(exc.value).splitlines()
    assert lines[0] == (
        "monitoring.yaml:31: alerts.rules.memory_usage.condition: unexpected '>' at column 15: "
        "expected a metric name, a number or '('"
    )
    assert lines[1] == "    memory_usage >> 0.9"
    assert lines[2] == "    " + " " * 14 + "^"
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty condition at column 1"),
        ("memory_usage >", "unexpected end of condition at column 15: expected a metric name, a number or '('"),
        ("memory_usage > 5xs", "unknown unit 'xs'"),
        ("gpu_memory_used > 5ms", "5ms is in seconds but the other side is in bytes at column 19"),
        ("memory_usage > 2GiB", "2GiB is in bytes but the other side is in ratio at column 16"),
        ("avg(x)", "avg() takes 2 arguments: avg(metric, 5m) at column 1"),
        ("avg(x, 5GiB) > 1", "avg() needs a window duration such as 5m at column 8"),
        ("avg(x + 1, 5m) > 1", "avg() needs a metric name here: avg(metric, 5m) at column 7"),
        ("quantile(2, x, 5m) > 1", "quantile() needs a number from 0 to 1 first at column 10"),
        ("foo(x) > 1", "unknown function 'foo'"),
        ("a > b > c", "unexpected '>' at column 7: comparisons do not chain; join them with and"),
        ("x{a=1} > 1", "unexpected '1' at column 5"),
        ('x{a=~"("} > 1', "bad regular expression"),
        ("1 > 0", "a condition needs at least one metric at column 1"),
        ("x > 1 and 2", "'and' joins conditions on metrics, not numbers at column 11"),
        ("x > 1 $", "unexpected '$' at column 7"),
        ("((x > 1)", "unexpected end of condition at column 9: expected ')'"),
        ("quantile by (rank) (x) > 1", "quantile by/without needs a number from 0 to 1 first at column 21"),
        ("quantile by (rank) (1.5, x) > 1", "quantile by/without needs a number from 0 to 1 first at column 21"),
        ("quantile by (rank) (50%, x) > 1", "quantile by/without needs a number from 0 to 1 first at column 21"),
        ('sum by ("rank") (x) > 1', "unexpected '\"rank\"' at column 9: expected a label name"),
        ("sum by (rank host) (x) > 1", "unexpected 'host' at column 14: expected ',' or ')'"),
        ("sum without (rank) (1) > x", "sum without needs a metric to aggregate at column 1"),
        ("sum by (rank) x > 1", "unexpected 'x' at column 15: expected '('"),
        ("sum by (rank) (x, 5m) > 1", "unexpected ',' at column 17: expected ')'"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(RuleError) as exc:
        lang.parse(text)
    assert message in _first_line(exc)


def test_unknown_metric_suggests() -> None:
    cond = lang.parse("gpu_util > 0.5")
    with pytest.raises(RuleError) as exc:
        lang.check_names(
            cond, {"gpu_utilization", "memory_usage"}, file="m.yaml", line=3, path="alerts.rules.g.condition"
        )
    assert _first_line(exc) == (
        "m.yaml:3: alerts.rules.g.condition: unknown metric 'gpu_util' (did you mean \"gpu_utilization\"?) at column 1"
    )


def test_a_quantile_label_on_a_histogram_points_at_the_window_functions() -> None:
    """Scraped latency is stored as buckets: a selector on the old quantile series would never match."""
    cond = lang.parse('inference_latency{quantile="0.99"} > 500')
    with pytest.raises(RuleError) as exc:
        lang.check_names(cond, {"inference_latency"}, file="m.yaml", line=4, path="alerts.rules.slow.condition")
    assert _first_line(exc).startswith(
        "m.yaml:4: alerts.rules.slow.condition: inference_latency is a histogram (buckets, not quantile series): "
        "write p99(inference_latency, 5m)"
    )
    lang.check_names(lang.parse("p99(inference_latency, 5m) > 500"), {"inference_latency"})  # the way to say it


def test_deep_nesting_is_a_rule_error() -> None:
    with pytest.raises(RuleError, match="nested too deeply"):
        lang.parse("(" * 500 + "x" + ")" * 500)
    with pytest.raises(RuleError, match="nested too deeply"):
        lang.parse("not " * 500 + "x > 1")


def test_to_base_factor_follows_the_metric() -> None:
    assert tree.to_base(lang.parse("p95(inference_latency, 5m) > 1").tree) == pytest.approx(1e-3)
    assert tree.to_base(lang.parse("memory_usage > 1").tree) == 1.0
    assert tree.duration_text(5400) == "1h30m"
    assert tree.duration_text(0.5) == "500ms"


ALPHABET = st.sampled_from(
    [
        *"abcxyz_019.eE%()<>=!{}\",+-*/ ~'",
        "memory_usage",
        " and ",
        " or ",
        " not ",
        " unless ",
        "avg(",
        "p95(",
        "quantile(",
        "sum ",
        " by (",
        " without (",
        "rank",
        "5m",
        "ms",
        "GiB",
        "1e-6",
    ],
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ALPHABET, max_size=30).map("".join))
def test_fuzz_tokens_parse_or_rule_error(text: str) -> None:
    try:
        cond = lang.parse(text)
    except RuleError as exc:
        message = str(exc)
        assert "at column" in message
    else:
        assert cond.metrics  # a condition that parses names at least one metric
        lang.parse(tree.render(cond.tree))  # and renders to text that parses again


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_any_text_parse_or_rule_error(text: str) -> None:
    with contextlib.suppress(RuleError):
        lang.parse(text)
