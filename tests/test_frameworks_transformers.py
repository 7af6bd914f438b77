"""A real Hugging Face ``Trainer`` (tiny Llama from a config, synthetic token ids, CPU, offline) under
``llamamon record``: zero-code from what the Trainer prints, and with ``LlamamonCallback``.

The reference is the Trainer's own record: ``trainer.state.log_history`` (every ``on_log`` dict with its
global step), which the job writes to a JSON file, and the dict lines it printed (the job's stdout, which
``record`` passes through unchanged). Stored values are compared exactly with those, as multisets of
(metric, step, value), so a value lost, doubled or filed under another step fails.
"""

from __future__ import annotations

import ast
import json
import math
from collections import Counter

import polars as pl
import pytest

from llamamon.catalog import canonical
from tests.frameworks import python_job, record_job, require_modules, stored, training_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SKIP = {"step", "total_flos"}  # log_history's step is the row's step; total_flos is not a metric
TIMINGS = ("_runtime", "_per_second")  # differ from run to run


@pytest.fixture(scope="module")
def frameworks():
    require_modules("torch", "transformers", "accelerate")


def run_trainer(folder, *, callback: bool, options: tuple[str, ...] = (), every_10: bool = False):
    args = ("history.json", "--callback") if callback else ("history.json",)
    args += ("--every-10",) if every_10 else ()
    result, run, rows = record_job(folder, *python_job("hf_trainer.py", *args), options=options)
    assert run["exit_code"] == 0
    history = json.loads((folder / "history.json").read_text())
    return result, history, rows


def from_history(history: list[dict]) -> Counter:
    """What the Trainer logged, under llamamon's names, at the Trainer's steps."""
    return Counter(
        (canonical(key), entry["step"], float(value), "")
        for entry in history
        for key, value in entry.items()
        if key not in SKIP
    )


def printed_dicts(stdout: bytes) -> list[dict]:
    lines = [line.strip() for line in stdout.decode().splitlines()]
    return [ast.literal_eval(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def zero_code(frameworks, tmp_path_factory):
    return run_trainer(tmp_path_factory.mktemp("zero-code"), callback=False)


@pytest.fixture(scope="module")
def zero_code_every_10(frameworks, tmp_path_factory):
    return run_trainer(tmp_path_factory.mktemp("zero-code-10"), callback=False, every_10=True)


@pytest.fixture(scope="module")
def with_callback(frameworks, tmp_path_factory):
    # record's defaults: output parsing is on, and the callback's claim must keep the printed copies out
    return run_trainer(tmp_path_factory.mktemp("callback"), callback=True)


def test_the_trainer_logged_what_the_tests_rely_on(zero_code):
    _, history, _ = zero_code
    train = [e for e in history if "loss" in e]
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in train] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in evals] == [3, 6]
    assert all({"grad_norm", "learning_rate", "epoch"} <= e.keys() for e in train)
    assert "train_loss" in history[-1]  # the end-of-training summary


def test_zero_code_records_every_printed_value_once(zero_code):
    result, history, rows = zero_code
    printed = printed_dicts(result.stdout)
    # The printed lines are the Trainer's log entries, in order, at the precision it prints them with.
    assert len(printed) == len(history)
    for line, entry in zip(printed, history, strict=True):
        assert line.keys() == entry.keys() - SKIP
        for key, text in line.items():
            tol = 5e-3 if key == "epoch" else 0.0  # transformers 4.x prints the epoch rounded to 2 places
            assert math.isclose(float(text), entry[key], rel_tol=5e-4, abs_tol=tol), (key, text, entry)
    # The printed dicts carry no step; each gets the Trainer's global step of that log (from its progress bar).
    expected = Counter(
        (canonical(k), entry["step"], float(v), "")
        for line, entry in zip(printed, history, strict=True)
        for k, v in line.items()
    )
    names = {metric for metric, *_ in expected}
    assert {"loss", "learning_rate", "grad_norm", "epoch", "validation_loss"} <= names
    assert stored(rows, names) == expected
    assert training_names(rows) <= names
    last = rows.filter(pl.col("metric") == "loss").sort("time")["value"][-1]
    assert last == float([line for line in printed if "loss" in line][-1]["loss"])  # not the run's mean


def test_zero_code_logging_every_10_steps_has_the_trainers_steps(zero_code_every_10):
    """The issue's run: logging_steps=10, no callback; every row at the global step the Trainer logged it at."""
    result, history, rows = zero_code_every_10
    printed = printed_dicts(result.stdout)
    assert [e["step"] for e in history] == [10, 10, 20, 20, 25, 25]  # train/eval at 10 and 20, eval + summary at 25
    assert len(printed) == len(history)
    expected = Counter(
        (canonical(k), entry["step"], float(v), "")
        for line, entry in zip(printed, history, strict=True)
        for k, v in line.items()
    )
    names = {metric for metric, *_ in expected}
    assert stored(rows, names) == expected  # each value once, at its step: no doubled and no stepless rows
    loss = rows.filter(pl.col("metric") == "loss").sort("step")
    assert loss["step"].to_list() == [10, 20]
    assert loss["value"][-1] == float([line for line in printed if "loss" in line][-1]["loss"])  # not train_loss
    assert rows.filter(pl.col("metric") == "validation_loss")["step"].sort().to_list() == [10, 20, 25]


def test_callback_records_exactly_what_the_trainer_logged(with_callback):
    _, history, rows = with_callback
    expected = from_history(history)
    names = {metric for metric, *_ in expected}
    assert {"loss", "learning_rate", "grad_norm", "epoch", "validation_loss"} <= names
    assert stored(rows, names) == expected
    assert training_names(rows) <= names | {"step"}
    last = rows.filter(pl.col("metric") == "loss").sort("step")["value"][-1]
    assert last == [e["loss"] for e in history if "loss" in e][-1]  # the end summary's mean is train_loss
    assert stored(rows, {"train_loss"}) == Counter([("train_loss", history[-1]["step"], history[-1]["train_loss"], "")])
    steps = rows.filter(pl.col("metric") == "step").select("step", "value").rows()
    assert steps
    assert all(step == value and step in {e["step"] for e in history} for step, value in steps)


def test_zero_code_and_callback_agree(zero_code, with_callback):
    """Two runs of the same seeded job: the same metrics, as often, at the precision the Trainer prints."""
    printed_rows, callback_rows = zero_code[2], with_callback[2]
    names = {m for m, *_ in from_history(with_callback[1])}
    assert names == {m for m, *_ in from_history(zero_code[1])}
    for rows in (printed_rows, callback_rows):
        assert set(rows.filter(pl.col("metric").is_in(sorted(names)))["metric"]) == names
    for name in sorted(names):
        a = sorted(printed_rows.filter(pl.col("metric") == name)["value"].to_list())
        b = sorted(callback_rows.filter(pl.col("metric") == name)["value"].to_list())
        assert len(a) == len(b), name
        if not name.endswith(TIMINGS):
            assert all(
                math.isclose(x, y, rel_tol=5e-4, abs_tol=5e-3 if name == "epoch" else 0.0)
                for x, y in zip(a, b, strict=True)
            )
