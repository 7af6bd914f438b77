"""The run header's Config table: the hyperparameters ``llamamon.init(config=...)`` stored with the run."""

from __future__ import annotations

import re

from report_store import save_run, write_rows

from llamamon.report.render import render_report
from llamamon.samples import Row, RunInfo

T0 = 1_763_437_200.0
RUN = "20261118T034000Z-gpu-box-c0f1"


def _html(tmp_path, config: dict) -> str:
    metrics_dir = tmp_path / ".metrics"
    info = RunInfo(id=RUN, host="gpu-box", start=T0, end=T0 + 60, exit_code=0, name="cfg", config=config)
    save_run(metrics_dir, info)
    write_rows(metrics_dir, [Row(T0 + i, "training", "loss", 1.0 / (i + 1), step=i) for i in range(10)], run=RUN)
    return render_report(metrics_dir, [info], tmp_path / "r.html").read_text(encoding="utf-8")


def test_config_table_in_the_run_header(tmp_path):
    html = _html(tmp_path, {"lr": 3e-4, "optimizer": {"name": "<adamw>", "betas": [0.9, 0.95]}, "warmup": "nan"})
    (table,) = re.findall(r'<table class="kv config"><caption>Config</caption>(.*?)</table>', html, re.S)
    rows = re.findall(r'<th scope="row">(.*?)</th><td><code>(.*?)</code></td>', table)
    assert rows == [
        ("lr", "0.0003"),
        ("optimizer.betas", "[0.9, 0.95]"),
        ("optimizer.name", "&lt;adamw&gt;"),
        ("warmup", "nan"),
    ]


def test_no_config_no_table(tmp_path):
    assert "<caption>Config</caption>" not in _html(tmp_path, {})
