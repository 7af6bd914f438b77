"""A distributed job's report, from real processes: figures per rank, step time among the training metrics,
and the straggler view naming the slow rank of a simulated 4-node x 2-rank job (and none of a balanced one).

Nodes are simulated on this machine as the multi-host tests do: one `llamamon record` per node, each with
its own LLAMAMON_HOST, running two rank processes with the launcher's RANK/LOCAL_RANK/NODE_RANK set.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from conftest import llamamon_env, run_llamamon
from polars.testing import assert_frame_equal
from report_store import T0, run_info, save_run, write_rows
from test_report_panels import panels, svg_texts

from llamamon.report.dashboards.ranks import _timed_rows
from llamamon.report.ranks import run_figures
from llamamon.report.render import render_report
from llamamon.samples import Row, make_labels
from llamamon.stragglers import rank_timings, step_times

PY = sys.executable
RUN = "20261118T000000Z-node-a-0001"

# Rank r logs 500 steps; its loss ends at 0.3339 + 0.01 r, its step time is 2 ms + 0.1 ms r. The sleep keeps two
# steps from sharing a microsecond timestamp (a real step takes longer): the summary's last value is the one
# at a series' last time.
TWO_RANKS = """
import os, time, llamamon
r = int(os.environ["RANK"])
for s in range(500):
    time.sleep(0.0005)
    llamamon.log(loss=0.3339 + 0.01 * r + 0.001 * (499 - s), step_time=0.002 + 0.0001 * r, step=s)
"""

# One rank of a simulated job: sleeps SLEEP seconds a step and logs only its step (and loss): no step_time.
RANK_LOOP = """
import os, time, llamamon
sleep = float(os.environ["SLEEP"])
for s in range(int(os.environ["STEPS"])):
    time.sleep(sleep)
    llamamon.log(loss=1.0 / (s + 1), step=s)
"""


def text(html: str) -> str:
    """The page's text, tags and inline images dropped, whitespace collapsed."""
    html = re.sub(r"<img[^>]*>|<svg.*?</svg>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#39;", "'")


def table(html: str, title: str) -> str:
    start = html.index(f"<h3>{title}</h3>")
    return html[start : html.index("</table>", start)]


def report(tmp_path: Path, metrics: Path, *runs: str) -> str:
    out = tmp_path / "report.html"
    picks = [a for run in runs for a in ("--run", run)]
    done = run_llamamon("report", "--metrics-dir", str(metrics), *picks, "-o", str(out), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return out.read_text()


def run_ids(metrics: Path) -> list[str]:
    return sorted(json.loads(p.read_text())["id"] for p in (metrics / "runs").glob("*.json"))


def ranks_command(script: Path, ranks: list[tuple[int, int, float]], node: int | None, steps: int) -> list[str]:
    """sh -c starting one process per (rank, local rank, sleep) with the launcher's variables, then waiting."""
    starts = []
    for rank, local, sleep in ranks:
        env = f"RANK={rank} LOCAL_RANK={local} SLEEP={sleep} STEPS={steps}"
        env += f" NODE_RANK={node}" if node is not None else ""
        starts.append(f"{env} {PY} {script} &")
    return ["sh", "-c", " ".join(starts) + " wait"]


def assert_per_rank_report(html: str) -> None:
    page = text(html)
    summary = table(html, "Training summary")
    # Bug 1: the step counter is no metric of the summary (its min per rank said 97 and 75).
    assert "<td>step</td>" not in summary
    # Per rank rows, and step_time among them: a training metric with its unit, not "Other metrics".
    assert len(re.findall(r"<td>loss</td>", summary)) == 2
    assert len(re.findall(r"<td>step_time</td>", summary)) == 2
    assert "Other metrics the job logged" not in html
    # Bug 2: rank 0's last loss, and the ranks' range; never their mean (0.3389).
    assert "last loss 0.3339 (rank 0); ranks 0.3339–0.3439" in page
    assert "0.3389" not in page
    assert "last step 499 (all ranks)" in page
    # Bug 3: step time is charted, per rank.
    assert 'id="panel-stragglers"' in html
    assert "Step time per rank from logged step_time, one line per rank." in page


def test_two_ranks_under_record_are_reported_per_rank(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TWO_RANKS)
    metrics = tmp_path / "m"
    child = ["sh", "-c", f"RANK=0 LOCAL_RANK=0 {PY} {script} & RANK=1 LOCAL_RANK=1 {PY} {script} & wait"]
    done = run_llamamon("record", "--no-gpu", "--metrics-dir", str(metrics), "--", *child, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert_per_rank_report(report(tmp_path, metrics))


def test_two_ranks_of_an_api_owned_run_are_reported_per_rank(tmp_path):
    """No recorder: the launcher's llamamon.init() starts the run and the rank processes it starts join it."""
    script = tmp_path / "train.py"
    script.write_text(TWO_RANKS)
    launcher = f"""
        import os, subprocess, sys, llamamon
        llamamon.init(name="two-ranks")
        procs = [
            subprocess.Popen([sys.executable, {str(script)!r}], env={{**os.environ, "RANK": r, "LOCAL_RANK": r}})
            for r in ("0", "1")
        ]
        sys.exit(max(p.wait() for p in procs))
    """
    result = subprocess.run(
        [PY, "-c", textwrap.dedent(launcher)],
        cwd=tmp_path,
        env=llamamon_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    metrics = tmp_path / ".metrics"
    (run,) = run_ids(metrics)
    assert_per_rank_report(report(tmp_path, metrics, run))


def simulated_job(tmp_path: Path, slow: int | None, steps: int = 150) -> tuple[Path, list[str]]:
    """4 nodes x 2 ranks, one `llamamon record` per node (host node-N), all at once; rank ``slow`` 50% slower."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_LOOP)
    metrics = tmp_path / "m"
    procs = []
    for node in range(4):
        ranks = [(2 * node + j, j, 0.03 if 2 * node + j == slow else 0.02) for j in (0, 1)]
        argv = [PY, "-m", "llamamon", "record", "--no-gpu", "--metrics-dir", str(metrics), "--"]
        argv += ranks_command(script, ranks, node, steps)
        env = llamamon_env(LLAMAMON_HOST=f"node-{node}")
        procs.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()
    runs = run_ids(metrics)
    assert len(runs) == 4
    return metrics, runs


def slowest_rows(html: str) -> list[list[str]]:
    body = table(html, "Slowest ranks")
    rows = re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, flags=re.S) for r in rows]
    return [c for c in cells if c and "<th" not in c[0] and c[0] != "rank"]


def test_the_report_names_the_slow_rank_of_a_four_node_job(tmp_path):
    metrics, runs = simulated_job(tmp_path, slow=5)
    html = report(tmp_path, metrics, *runs)
    page = text(html)
    rows = slowest_rows(html)
    assert len(rows) == 8
    first = rows[0]
    assert first[0] == "node-2 · rank 5 (straggler)"
    assert first[1] == "2"  # node_rank, from NODE_RANK
    assert int(first[3].rstrip("%")) >= 25  # 30 ms against 20 ms a step: about +50%
    assert int(first[5].replace(",", "")) > 10  # steps behind the median when the first rank was done
    assert not any("(straggler)" in r[0] for r in rows[1:])
    found = re.search(r"Stragglers \([^)]*\): (.*?)\.", page)
    assert found, page
    assert found.group(1).startswith("node-2 · rank 5 (+")
    assert "Step time per rank from the times of its steps" in page  # no rank logged step_time


def test_a_balanced_four_node_job_names_no_straggler(tmp_path):
    metrics, runs = simulated_job(tmp_path, slow=None)
    html = report(tmp_path, metrics, *runs)
    rows = slowest_rows(html)
    assert len(rows) == 8
    assert not any("(straggler)" in r[0] for r in rows)
    assert "No straggler: no rank was more than 25% over the ranks' median step time" in text(html)


def frame(rows: list[tuple[str, str, int, float]]) -> pl.DataFrame:
    """(labels, metric, step, seconds) rows of one run -> the columns step_times reads (value: the step)."""
    labels, metrics, steps, seconds = (list(c) for c in zip(*rows, strict=True))
    return pl.DataFrame(
        {"run": "r", "labels": labels, "metric": metrics, "step": steps, "value": [float(s) for s in steps]}
    ).with_columns(
        pl.from_epoch(pl.Series([int(t * 1e6) for t in seconds]), time_unit="us")
        .dt.replace_time_zone("UTC")
        .alias("time")
    )


def test_step_time_is_derived_from_the_step_counter_and_logged_step_time_wins():
    slow, fast = '{"rank":"1"}', '{"rank":"0"}'
    rows = [(fast, "step", s, 2.0 * s) for s in range(50)] + [(slow, "step", s, 4.0 * s) for s in range(50)]
    times = step_times(frame(rows))
    per_rank = times.group_by("rank").agg(pl.col("step_time").median()).sort("rank")
    assert per_rank["step_time"].to_list() == pytest.approx([2.0, 4.0])
    timings = rank_timings(times)
    assert [(t.rank, t.straggler) for t in timings] == [(1, True), (0, False)]
    assert timings[0].vs_median == pytest.approx(4.0 / 3.0 - 1)
    assert timings[0].steps_behind == 12  # at t=98 s rank 0 was at step 49, rank 1 at 24: 12.5 (whole steps: 12)
    # A rank that logs step_time is read from it, not from its step counter.
    logged = frame(rows + [(slow, "step_time", s, 4.0 * s) for s in range(50)])
    logged = logged.with_columns(pl.when(pl.col("metric") == "step_time").then(2.0).otherwise("value").alias("value"))
    mixed = step_times(logged)
    assert mixed.filter(pl.col("rank") == 1)["step_time"].unique().to_list() == [2.0]
    assert mixed.filter(pl.col("rank") == 0)["step_time"].unique().to_list() == [2.0]
    balanced = rank_timings(mixed)
    assert len(balanced) == 2
    assert not any(t.straggler for t in balanced)


def test_the_view_hands_step_times_only_the_rows_it_reads_and_gets_the_same_times():
    logs, counts = '{"rank":"0"}', '{"rank":"1"}'  # rank 0 logs step_time beside loss; rank 1 only a step counter
    rows = [(logs, "step_time", s, 2.0) for s in range(50)] + [(logs, "loss", s, 1.0 / (s + 1)) for s in range(50)]
    rows += [(counts, "step", s, float(s)) for s in range(50)] + [(counts, "loss", s, 0.5) for s in range(50)]
    full = frame(rows)
    cut = _timed_rows(full)
    assert cut.height == 50 + 100  # rank 0's loss rows are left out, all of rank 1's kept
    assert_frame_equal(step_times(cut), step_times(full))


def test_each_runs_figure_is_its_lowest_ranks_with_the_ranks_range_in_one_grouping():
    rows = pl.DataFrame(
        {
            "run": ["a", "a", "a", "b", "b", "c", "c"],
            "labels": [
                '{"gpu":"0","rank":"1"}',
                '{"gpu":"1","rank":"1"}',  # rank 1's second GPU: the two combined as one process's
                '{"rank":"0"}',
                '{"rank":"3"}',  # one rank only: the run's figure as one process's
                '{"gpu":"0"}',
                '{"gpu":"0"}',  # no rank at all
                '{"gpu":"1"}',
            ],
            "max": [5.0, 7.0, 2.0, 4.0, 6.0, 1.0, 3.0],
            "mean": [5.0, 7.0, 2.0, 4.0, 6.0, 1.0, 3.0],
        }
    )
    peak = {r["run"]: r for r in run_figures(rows, "max").iter_rows(named=True)}
    assert peak["a"] == {"run": "a", "value": 2.0, "rank": 0, "lo": 2.0, "hi": 7.0}  # rank 0's; rank 1's max is 7
    assert peak["b"] == {"run": "b", "value": 6.0, "rank": None, "lo": None, "hi": None}
    assert peak["c"] == {"run": "c", "value": 3.0, "rank": None, "lo": None, "hi": None}
    mean = run_figures(rows, "mean")
    assert mean["run"].to_list() == ["a", "b", "c"]  # in the rows' order
    assert mean.filter(pl.col("run") == "a")["hi"].to_list() == [6.0]  # rank 1's GPUs averaged


def test_one_rank_or_none_has_no_timings():
    rows = [('{"rank":"0"}', "step", s, 2.0 * s) for s in range(20)] + [("", "step", s, 1.0 * s) for s in range(20)]
    assert rank_timings(step_times(frame(rows))) == []


def stored_ranks(tmp_path: Path, seconds: list[float], steps: int = 60, warmup: float | None = None) -> str:
    """One run whose rank r takes seconds[r] a step (step 1, the first one timed, ``warmup`` s where given):
    its HTML report."""
    metrics = tmp_path / ".metrics"
    info = run_info(RUN, T0, T0 + steps * max(seconds), host="node-a")
    save_run(metrics, info)
    rows = []
    for rank, dt in enumerate(seconds):
        labels = make_labels(rank=rank, local_rank=rank % 8, node_rank=rank // 8)
        t = T0
        for s in range(steps):
            t += warmup if warmup is not None and s == 1 else dt
            rows.append(Row(t, "training", "loss", 1.0 / (s + 1), labels, step=s))
    write_rows(metrics, rows, run=RUN, host="node-a")
    return render_report(metrics, [info], tmp_path / "r.html").read_text()


def test_many_ranks_draw_the_median_band_and_the_slowest_ranks_only(tmp_path):
    html = stored_ranks(tmp_path, [1.0] * 19 + [1.4] + [1.0] * 4)
    _alt, svg = panels(html)["stragglers"]
    legend = [t for t in svg_texts(svg) if " · rank " in t or t.startswith("median")]
    assert legend[0] == "median of ranks (band p10–p90)"
    assert legend[1] == "node-a · rank 19"  # the slowest first
    assert len(legend) == 1 + 4  # not 24 lines
    rows = slowest_rows(html)
    assert len(rows) == 8
    assert rows[0][:4] == ["node-a · rank 19 (straggler)", "2", "1.4s", "+40%"]
    assert "median with p10–p90 band, and the slowest ranks" in text(html)
    summary = text(table(html, "Training summary"))
    assert summary.index("rank=2 ") < summary.index("rank=10 ")  # ranks in number order


def test_a_slow_first_step_does_not_flatten_the_ranks(tmp_path):
    html = stored_ranks(tmp_path, [1.0, 1.05], warmup=40.0)
    _alt, svg = panels(html)["stragglers"]
    assert "The axis stops at 1.6s: slower steps (warm-up, evaluation) go above it." in text(html)
    texts = svg_texts(svg)
    y_ticks = texts[texts.index("step") + 1 : texts.index("step_time (s)")]
    assert y_ticks[-1] == "1.4"  # the axis ends at 1.6 s, not at the warm-up step's 40 s
    assert not any("(straggler)" in r[0] for r in slowest_rows(html))


def test_one_process_gets_a_step_time_chart_and_no_straggler_view(tmp_path):
    metrics = tmp_path / ".metrics"
    info = run_info(RUN, T0, T0 + 100)
    save_run(metrics, info)
    rows = [Row(T0 + s, "training", "step_time", 0.5 + 0.001 * s, step=s) for s in range(100)]
    rows += [Row(T0 + s, "training", "loss", 1.0 / (s + 1), step=s) for s in range(100)]
    write_rows(metrics, rows, run=RUN)
    html = render_report(metrics, [info], tmp_path / "r.html").read_text()
    found = panels(html)
    assert "step-time" in found
    assert "stragglers" not in found
    assert "<h3>Slowest ranks</h3>" not in html
    assert "<td>step_time</td>" in table(html, "Training summary")


def test_separate_jobs_side_by_side_compare_their_ranks_among_themselves():
    """Two runs that both have ranks 0 and 1 are two jobs: the slower job's ranks are no stragglers of the other."""
    fast = [(f'{{"rank":"{r}"}}', "step", s, 1.0 * s) for r in (0, 1) for s in range(40)]
    slow = [(f'{{"rank":"{r}"}}', "step", s, 2.0 * s) for r in (0, 1) for s in range(40)]
    times = pl.concat([step_times(frame(fast)), step_times(frame(slow).with_columns(pl.lit("b").alias("run")))])
    timings = rank_timings(times)
    assert len(timings) == 4
    assert not any(t.straggler for t in timings)
    assert {round(t.vs_median, 6) for t in timings} == {0.0}
    # The same four ranks numbered 0-3 are one job of two nodes: run b's are behind.
    renumbered = times.with_columns(pl.when(pl.col("run") == "b").then(pl.col("rank") + 2).otherwise("rank"))
    one_job = rank_timings(renumbered)
    assert [(t.run, t.straggler) for t in one_job] == [("b", True), ("b", True), ("r", False), ("r", False)]


def test_the_markdown_summary_lists_the_slowest_ranks(tmp_path):
    stored_ranks(tmp_path, [1.0, 1.0, 1.5, 1.0])
    metrics = tmp_path / ".metrics"
    info = run_info(RUN, T0, T0 + 90, host="node-a")
    md = render_report(metrics, [info], tmp_path / "r.md", fmt="markdown").read_text()
    section = md[md.index("### Slowest ranks") : md.index("### Charts")]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| rank | node rank | step time (median) | vs median |")
    assert lines[1].startswith("| node-a · rank 2 (straggler) | 0 | 1.5s | +50% |")
    assert len(lines) == 1 + 4
    assert "Steps behind: the ranks' median step minus the rank's" in section


def test_the_view_takes_its_limit_from_the_straggler_ratio_threshold(tmp_path):
    """One limit for the view and the training_straggler rule: a rank 50% slower is a straggler at the
    default 1.25 and not at a straggler_ratio of 1.6."""
    from llamamon.report.data import Thresholds

    stored_ranks(tmp_path, [1.0, 1.0, 1.5, 1.0])
    info = run_info(RUN, T0, T0 + 90, host="node-a")
    for ratio, named in ((1.25, True), (1.6, False)):
        md = render_report(
            tmp_path / ".metrics", [info], tmp_path / f"r{ratio}.md", fmt="markdown",
            thresholds=Thresholds(straggler_ratio=ratio),
        ).read_text()  # fmt: skip
        assert ("node-a · rank 2 (straggler)" in md) is named
