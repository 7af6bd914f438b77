"""Real PyTorch jobs under ``llamamon record``: a plain training loop reporting through ``TrainingMonitor``
and ``llamamon.log``, and a two-process DDP job (gloo) launched by torchrun.

Every stored value is compared exactly with what the job itself handed to llamamon (the job writes it to
a JSON file), so a value lost, doubled, given another step or another rank's label fails the test.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import polars as pl
import pytest

from llamamon.catalog import canonical
from llamamon.samples import labels_to_str, make_labels
from tests.frameworks import python_job, record_job, require_modules, stored, training_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _torch():
    require_modules("torch")


def test_plain_pytorch_loop_with_training_monitor(tmp_path):
    _, run, rows = record_job(tmp_path, *python_job("torch_loop.py", "logged.json"))
    assert run["exit_code"] == 0
    job = json.loads((tmp_path / "logged.json").read_text())
    expected = Counter(
        (canonical(name), entry["step"], value, "")
        for entry in job["logged"]
        for name, value in entry.items()
        if name != "step"
    )
    names = {metric for metric, *_ in expected}
    assert names == {"loss", "learning_rate", "grad_norm", "validation_loss", "epoch"}  # val_loss: an alias
    assert stored(rows, names) == expected  # grad_norm was a 0-dim tensor: stored as its .item()
    assert training_names(rows) == names | {"step", "steps_per_second"}
    assert rows.filter(pl.col("metric") == "step")["value"].to_list() == [20.0]  # the last step, once

    losses = [(e["step"], e["loss"]) for e in job["logged"] if "loss" in e]
    vals = [(e["step"], e["val_loss"]) for e in job["logged"] if "val_loss" in e]
    best_step, best = min(losses, key=lambda p: p[1])
    best_val_step, best_val = min(vals, key=lambda p: p[1])
    summary = job["summary"]
    assert summary["loss"] == {"latest": losses[-1][1], "best": best, "best_step": best_step, "step": 20}
    assert summary["validation_loss"] == {
        "latest": vals[-1][1],
        "best": best_val,
        "best_step": best_val_step,
        "step": 20,
    }
    assert summary["learning_rate"] == [e["learning_rate"] for e in job["logged"] if "learning_rate" in e][-1]
    assert summary["step"] == 20
    assert summary["steps_per_second"] > 0


def test_torchrun_two_ranks_gloo(tmp_path):
    # --tee 3 makes torchrun prefix each worker's lines ([default0]:), which the output parser turns into a
    # rank label; llamamon.log labels each process from torchrun's RANK, LOCAL_RANK and GROUP_RANK (the node).
    command = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--tee", "3")
    _, run, rows = record_job(tmp_path, *command, *python_job("ddp_gloo.py", str(tmp_path))[1:])
    assert run["exit_code"] == 0
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    logged = {r["rank"]: r["logged"] for r in ranks}
    assert logged[0] != logged[1]  # each rank its own data: a label swap or a merge would show

    api = Counter(
        (name, e["step"], value, labels_to_str(make_labels(rank=rank, local_rank=rank, node_rank=0)))
        for rank, entries in logged.items()
        for e in entries
        for name, value in e.items()
        if name != "step"
    )
    assert stored(rows, {"loss", "worker_rank"}) == api

    printed = Counter(
        ("printed_loss", e["step"], e["loss"], labels_to_str(make_labels(rank=rank)))
        for rank, entries in logged.items()
        for e in entries
    )
    assert stored(rows, {"printed_loss"}) == printed

    steps = rows.filter(pl.col("metric") == "step").select("value", "labels").sort("labels").rows()
    ranked = ['{"local_rank":"0","node_rank":"0","rank":"0"}', '{"local_rank":"1","node_rank":"0","rank":"1"}']
    assert steps == [(8.0, ranked[0]), (8.0, ranked[1])]
    # torchrun's agent and both workers were in the recorded process tree together
    assert rows.filter(pl.col("metric") == "process_tree_size")["value"].max() >= 3
