"""The Trainer's printed dicts get their global step from its progress bar, drawn by real tqdm as the
Trainer's ``ProgressCallback`` draws it (bar on one stream, ``tqdm.write`` of the dict, an evaluation bar
one line down), whichever order the two streams are read in, or in one stream as a pty merges them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llamamon.collectors.stdout import OutputParser
from llamamon.collectors.trainer_steps import GRACE, TrainerSteps

pytest.importorskip("tqdm")


JOB = """
import sys
from tqdm import tqdm

steps, log_every, eval_every = map(int, sys.argv[1:])
bar = tqdm(total=steps)  # stderr, as the Trainer's
for step in range(1, steps + 1):
    bar.update(1)  # on_step_end
    if step % log_every == 0:  # on_log: the dict to stdout, the bar cleared and redrawn around it
        tqdm.write(str({"loss": f"{4 - step / 100:.4g}", "epoch": f"{step / 8:.4g}"}))
    if step % eval_every == 0 or step == steps:
        evaluation = tqdm(total=2, leave=False)
        evaluation.update(2)
        tqdm.write(str({"eval_loss": "4.1", "eval_accuracy": "0.5", "epoch": f"{step / 8:.4g}"}))
        evaluation.close()
tqdm.write(str({"train_runtime": "0.1", "train_loss": "4.0", "epoch": f"{steps / 8:.4g}"}))
bar.close()
"""


def trainer_output(steps: int, log_every: int, eval_every: int, *, merged: bool) -> tuple[bytes, bytes, list[int]]:
    """(stdout, stderr, step of each printed dict) as ProgressCallback writes them, through real pipes
    (merged: stderr into stdout, one stream as a pty gives it)."""
    args = (sys.executable, "-c", JOB, str(steps), str(log_every), str(eval_every))
    done = subprocess.run(
        args,
        capture_output=not merged,
        stdout=subprocess.PIPE if merged else None,
        stderr=subprocess.STDOUT if merged else None,
        timeout=60,
        check=True,
    )
    logged = [s for s in range(1, steps + 1) if s % log_every == 0]
    logged = sorted(logged + [s for s in range(1, steps + 1) if s % eval_every == 0 or s == steps] + [steps])
    return done.stdout, done.stderr or b"", logged


def parse(first: bytes, second: bytes, chunk: int = 7) -> list:
    steps = TrainerSteps()
    a, b = OutputParser(steps=steps), OutputParser(steps=steps)
    samples = []
    for parser, data in ((a, first), (b, second)):
        for i in range(0, len(data), chunk):  # odd chunk sizes split lines and redraws anywhere
            samples += parser.feed(data[i : i + chunk], now=100.0)
    return samples + a.close(now=100.0) + b.close(now=100.0) + steps.release()


@pytest.mark.parametrize("stdout_first", [True, False])
def test_each_printed_dict_gets_the_step_its_bar_showed(stdout_first):
    out, err, logged = trainer_output(25, 10, 10, merged=False)
    samples = parse(out, err) if stdout_first else parse(err, out)
    epochs = [s for s in samples if s.metric == "epoch"]
    assert sorted(s.step for s in epochs) == sorted(logged) == [10, 10, 20, 20, 25, 25]
    assert sorted((s.metric, s.step) for s in samples if s.metric in ("loss", "validation_loss")) == [
        ("loss", 10),
        ("loss", 20),
        ("validation_loss", 10),
        ("validation_loss", 20),
        ("validation_loss", 25),
    ]


def test_one_merged_stream_as_a_pty_delivers_it():
    merged, _, logged = trainer_output(12, 3, 6, merged=True)
    samples = parse(merged, b"")
    assert sorted(s.step for s in samples if s.metric == "epoch") == logged


def test_without_a_bar_the_dicts_go_on_stepless_after_the_grace():
    steps = TrainerSteps()
    parser = OutputParser(steps=steps)
    assert parser.feed(b"{'loss': '1.5', 'epoch': '0.1'}\n", now=10.0) == []  # its bar may still be on its way
    assert parser.feed(b"other output\n", now=10.0 + GRACE / 2) == []
    late = parser.feed(b"more output\n", now=10.0 + GRACE)
    assert [(s.metric, s.value, s.time, s.step) for s in late] == [
        ("loss", 1.5, 10.0, None),
        ("epoch", 0.1, 10.0, None),
    ]


def test_lines_with_their_own_step_are_not_held():
    parser = OutputParser(steps=TrainerSteps())
    got = parser.feed(b'{"loss": 0.5, "step": 7, "epoch": 1}\n', now=1.0)
    assert {(s.metric, s.step) for s in got} == {("loss", 7), ("epoch", 7)}


def test_dicts_printed_beside_a_bar_without_tqdm_write_go_on_after_the_grace():
    steps = TrainerSteps()
    out, err = OutputParser(steps=steps), OutputParser(steps=steps)
    assert (
        err.feed(b"\r  0%|          | 0/50 [00:00<?, ?it/s]\r 10%|#         | 5/50 [00:00<00:01, 40it/s]", now=1.0)
        == []
    )
    assert out.feed(b"{'loss': '2.5', 'epoch': '0.1'}\n", now=1.5) == []  # print(), so no clear around it
    assert err.feed(b"\r 20%|##        | 10/50 [00:00<00:01, 40it/s]", now=2.0) == []
    late = err.feed(b"\r 30%|###       | 15/50 [00:00<00:01, 40it/s]", now=1.5 + GRACE)
    assert [(s.metric, s.time, s.step) for s in late] == [("loss", 1.5, None), ("epoch", 1.5, None)]
