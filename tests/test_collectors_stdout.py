"""Zero-code metric lines: the pure parser, the line assembler and the per-stream parser."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamamon.collectors.stdout import LineAssembler, OutputParser, parse_line


def values(text: str, **kw) -> dict[str, float]:
    return {s.metric: s.value for s in parse_line(text, **kw)}


HF_TRAIN = "{'loss': 0.5123, 'grad_norm': 1.234, 'learning_rate': 4.8e-05, 'epoch': 0.12}"
HF_EVAL = "{'eval_loss': 0.43, 'eval_runtime': 12.3, 'eval_samples_per_second': 81.2, 'epoch': 1.0}"
HF_END = "{'train_runtime': 616.7, 'train_samples_per_second': 24.16, 'train_loss': 1.349, 'epoch': 1.0}"


def test_hf_trainer_train_line():
    assert values(HF_TRAIN) == {"loss": 0.5123, "grad_norm": 1.234, "learning_rate": 4.8e-05, "epoch": 0.12}


def test_hf_trainer_eval_line_maps_eval_loss_to_validation_loss():
    got = values(HF_EVAL)
    assert got["validation_loss"] == 0.43
    assert got["eval_runtime"] == 12.3
    assert "eval_loss" not in got


def test_hf_trainer_end_line():
    got = values(HF_END)
    # The run's summary keeps its own names: train_loss is the run's mean loss, not a last point of loss.
    assert got == {"train_runtime": 616.7, "train_samples_per_second": 24.16, "train_loss": 1.349, "epoch": 1.0}


def test_numbers_printed_as_strings():
    assert values("{'loss': '0.5123', 'learning_rate': '4.8e-05', 'epoch': ' 0.12 '}") == {
        "loss": 0.5123,
        "learning_rate": 4.8e-05,
        "epoch": 0.12,
    }


def test_json_line_with_step():
    (sample,) = parse_line('{"step": 10, "loss": 1.23}')
    assert (sample.metric, sample.value, sample.step, sample.time) == ("loss", 1.23, 10, None)


def test_non_finite_values_are_kept():
    got = values('{"step": 3, "loss": NaN, "grad_norm": Infinity, "lr": -inf}')
    assert math.isnan(got["loss"])
    assert got["grad_norm"] == math.inf
    assert got["learning_rate"] == -math.inf


def test_torchrun_prefix_becomes_rank_label():
    (sample,) = parse_line("[rank3]: {'loss': 0.5}")
    assert sample.labels == (("rank", "3"),)
    (sample,) = parse_line("[2026-01-01 10:00:00] {'loss': 0.5}")
    assert sample.labels == ()


@pytest.mark.parametrize(
    "line",
    [
        "",
        "hello world",
        "{",
        "{}",
        '{"level": "info", "msg": "started", "pid": 42}',  # structured log, no metric names
        "{'loss': 0.5, 'nested': {'a': 1}}",
        "{'loss': 0.5} and more text",
        "{'loss': __import__('os').system('true')}",
        "{'loss': 1 + 1}",
        "{loss: 0.5}",
        "config {'lr': 0.1}",  # a prefix that is not a torchrun rank tag
        "{'loss': [1, 2]}",
        "{'step': 1, 'loss': 0.5",
    ],
)
def test_ordinary_output_is_not_metrics(line):
    assert parse_line(line) == []


def test_booleans_and_strings_are_ignored_but_do_not_spoil_the_line():
    assert values("{'loss': 0.5, 'done': True, 'phase': 'warmup', 'note': None}") == {"loss": 0.5}


def test_progress_bar_redraws_split_on_carriage_return():
    line = " 10%|#    | 5/50 [00:01<00:09]\r" + " " * 40 + "\r{'loss': 0.5, 'epoch': 0.1}\r 12%|#   | 6/50"
    assert values(line) == {"loss": 0.5, "epoch": 0.1}


def test_configured_pattern_with_named_groups():
    pattern = re.compile(r"step (?P<step>\d+) \| loss (?P<loss>\S+) \| lr (?P<lr>\S+)")
    got = parse_line("step 120 | loss 0.413 | lr 3.0e-04", patterns=[pattern])
    assert {(s.metric, s.value, s.step) for s in got} == {("loss", 0.413, 120), ("learning_rate", 3.0e-4, 120)}


def test_pattern_group_that_is_not_a_number_is_skipped():
    pattern = re.compile(r"loss (?P<loss>\S+) phase (?P<phase>\w+)")
    assert values("loss 0.5 phase warmup", patterns=[pattern]) == {"loss": 0.5}


def test_config_aliases_extend_the_table():
    assert values("{'step': 1, 'my_loss': 0.2}", aliases={"my_loss": "loss"}) == {"loss": 0.2}
    # an alias target in the catalog is enough to recognise the line
    assert values("{'my_loss': 0.2}", aliases={"my_loss": "loss"}) == {"loss": 0.2}


def test_huge_line_is_skipped():
    assert parse_line("{'loss': 0.5, 'x': '" + "a" * (1 << 20) + "'}") == []


# -- line assembly -----------------------------------------------------------------------------------


def reference_lines(data: bytes, max_line: int) -> list[str]:
    pieces = data.replace(b"\r", b"\n").split(b"\n")
    return [p.decode("utf-8", "replace") for p in pieces if p and len(p) <= max_line]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_assembler_chunks_equal_whole_stream(data, cuts):
    max_line = 16
    assembler = LineAssembler(max_line=max_line)
    bounds = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    got = []
    for a, b in itertools.pairwise(bounds):
        got.extend(assembler.feed(data[a:b]))
    got.extend(assembler.flush())
    assert got == reference_lines(data, max_line)


def test_assembler_skips_a_long_line_spread_over_many_chunks_cheaply():
    assembler = LineAssembler(max_line=1024)
    assert assembler.feed(b"start") == []
    for _ in range(100):
        assert assembler.feed(b"x" * 1000) == []
    assert assembler._tail == b""  # nothing retained while skipping
    assert assembler.feed(b"yyy\nnext line\n") == ["next line"]
    assert assembler.skipped == 1


def test_partial_lines_and_multibyte_characters_across_chunks():
    text = "{'loss': 0.25, 'note': 'größe'}\n".encode()
    assembler = LineAssembler()
    lines = [line for i in range(len(text)) for line in assembler.feed(text[i : i + 1])]
    assert lines == ["{'loss': 0.25, 'note': 'größe'}"]


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_parse_line_never_raises_on_any_text(text):
    for sample in parse_line(text):
        assert isinstance(sample.value, float)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["loss", "lr", "eval_loss", "epoch", "grad_norm", "acc"]),
        st.one_of(st.floats(), st.integers(-(10**6), 10**6), st.text(max_size=8), st.booleans(), st.none()),
        min_size=1,
    )
)
def test_python_repr_of_flat_dicts_round_trips(data):
    data = {"loss": 0.5, **data}
    got = values(repr(data))
    for key, value in data.items():
        name = {"lr": "learning_rate", "eval_loss": "validation_loss"}.get(key, key)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[name])
        else:
            assert got[name] == float(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_feeding_never_changes_the_bytes(data):
    original = bytearray(data)
    chunk = bytearray(data)
    parser = OutputParser(patterns=[re.compile(r"loss (?P<loss>\S+)")])
    parser.feed(chunk)
    parser.close()
    assert chunk == original


def test_output_parser_stamps_samples_and_counts_lines():
    parser = OutputParser()
    assert parser.feed(b"epoch 1\n{'loss': 0.5", now=100.0) == []
    got = parser.feed(b", 'epoch': 1}\nbye", now=101.0)
    assert {(s.metric, s.value, s.time) for s in got} == {("loss", 0.5, 101.0), ("epoch", 1.0, 101.0)}
    assert parser.close(now=102.0) == []
    assert parser.lines == 3
    assert parser.metric_lines == 1
