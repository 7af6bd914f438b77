"""`llamamon export grafana`: three dashboards over the names the .prom files carry, checked by real tools.

What was possible here: no registry this project reaches (PyPI, Debian, npm) serves a Grafana server
(Debian main has no ``grafana``; Grafana's own apt repository is not reachable), so no test loads them
into a running Grafana. Instead, with the real things that do install:

- **Grafana's dashboard schema**: npm's ``@grafana/schema`` (Grafana's own package, its TypeScript types
  generated from the dashboard and timeseries-panel CUE kinds) and the TypeScript compiler, pinned in
  ``tests/grafana_schema/package.json`` (.ci/run installs them). Each dashboard, less the ``__inputs`` and
  ``__requires`` header that only the import dialog reads, is type-checked as a ``Dashboard`` object
  literal, each panel's options and custom field config as the timeseries panel's ``Options`` and
  ``FieldConfig``: an unknown field, a wrong type or a missing required field is a compile error.
- **Prometheus' own parser**: every query, with Grafana's variables interpolated as Grafana would (the
  "All" value ``.*``, ``$__rate_interval``), as a recording rule through ``promtool check rules``.
- **A real Prometheus** scraping a real node_exporter whose textfile folder llamamon's ``TextfileWriter``
  feeds for two hosts: every panel query returns data, and every template variable's ``label_values``
  (asked the way Grafana's Prometheus data source asks it, ``/api/v1/label/<name>/values?match[]=``) lists
  the hosts, runs, ranks and GPUs that were written; then two real ``llamamon record`` runs as two nodes
  (``LLAMAMON_HOST``, ``RANK``) writing into the same folder appear in the host, rank and panel queries.
- The rest of what Grafana's import needs and the schema does not say (the ``__inputs`` data source
  prompt, unique panel ids, a grid that does not overlap, variables every query uses being defined) is
  asserted below on the JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from llamamon import catalog
from llamamon.prometheus import grafana
from llamamon.prometheus.snapshot import RUN_METRICS
from llamamon.prometheus.textfile import TextfileWriter
from llamamon.samples import Sample, make_labels
from tests.conftest import REPO, llamamon_env, missing_integration, require_binary, run_llamamon
from tests.test_prometheus_tools import (  # noqa: F401 - node_exporter and prometheus are fixtures
    http_get,
    node_exporter,
    prometheus,
    query,
    wait_for,
)

FILES = ("llamamon-system.json", "llamamon-training.json", "llamamon-inference.json")
VARIABLE = re.compile(r"\$(\w+)")
ALL = {"host": ".*", "run": ".*", "rank": ".*", "gpu": ".*", "__rate_interval": "1m"}


def boards() -> dict[str, dict[str, Any]]:
    return grafana.dashboards()


def targets(board: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in board["panels"] for t in p.get("targets", [])]


def interpolate(expr: str, values: dict[str, str]) -> str:
    """``$name`` as Grafana replaces it in a Prometheus query (every name must be one we give a value)."""
    return VARIABLE.sub(lambda m: values[m[1]], expr)


# --- the command ----------------------------------------------------------------------------------------------


def test_export_grafana_writes_the_three_dashboards(tmp_path):
    result = run_llamamon("export", "grafana", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [f"wrote {tmp_path / 'out' / name}" for name in FILES]
    written = {name: json.loads((tmp_path / "out" / name).read_text(encoding="utf-8")) for name in FILES}
    assert written == boards()
    # Without -o: the default folder in the working directory.
    result = run_llamamon("export", "grafana", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "llamamon-grafana").iterdir()) == sorted(FILES)


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_export_grafana_into_a_file_is_one_line_and_exit_2(tmp_path, where):
    (tmp_path / "a-file").write_text("not a folder\n")
    result = run_llamamon("export", "grafana", "-o", str(tmp_path / where), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.decode().splitlines()
    assert str(tmp_path / where) in line
    assert "Traceback" not in line
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


# --- what the import needs, on the JSON ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_dashboard_is_importable_as_is(name):
    board = boards()[name]
    (source,) = board["__inputs"]
    assert (source["type"], source["pluginId"], source["name"]) == ("datasource", "prometheus", "DS_PROMETHEUS")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert board["schemaVersion"] >= 39
    assert board["uid"] == name.removesuffix(".json")
    assert len(board["uid"]) <= 40
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"panel {panel['id']} overlaps another"
        cells |= mine
    for panel, target in targets(board):
        assert panel["datasource"] == target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(VARIABLE.findall(target["expr"])) <= {*variables, "__rate_interval"}, target["expr"]
    for variable in variables.values():
        assert set(VARIABLE.findall(str(variable.get("query", "")))) <= set(variables)


def test_every_catalog_metric_has_a_panel_in_its_units():
    exprs = "\n".join(t["expr"] for board in boards().values() for _, t in targets(board))
    families = set(re.findall(r"llamamon_\w+", exprs))
    for metric in catalog.METRICS:
        if metric.group == "custom":
            continue
        wanted = metric.prometheus_name + ("_bucket" if metric.kind == "histogram" else "")
        assert wanted in families, f"{metric.name} has no panel"
    exported = {m.prometheus_name for m in catalog.METRICS}
    histogram_parts = {
        m.prometheus_name + s for m in catalog.METRICS if m.kind == "histogram" for s in ("_bucket", "_count")
    }
    assert families <= exported | histogram_parts  # no query names a family the export never writes
    assert set(grafana.GRAFANA_UNITS) == set(catalog.UNITS)
    (loss,) = [p for p in boards()["llamamon-training.json"]["panels"] if p["title"] == "loss"]
    (gpu_temp,) = [p for p in boards()["llamamon-system.json"]["panels"] if p["title"] == "gpu_temperature"]
    (ttft,) = [
        p for p in boards()["llamamon-inference.json"]["panels"] if p["title"] == "time_to_first_token quantiles"
    ]
    assert [p["fieldConfig"]["defaults"]["unit"] for p in (loss, gpu_temp, ttft)] == ["short", "celsius", "s"]
    assert [t["legendFormat"].split()[0] for t in ttft["targets"]] == ["p50", "p90", "p99"]


# --- Prometheus' parser -------------------------------------------------------------------------------------


def promtool_rules(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"llamamon_grafana:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "grafana", "rules": rules}]}))  # JSON is YAML
    return subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_parses_every_query(tmp_path):
    exprs = [interpolate(t["expr"], ALL) for board in boards().values() for _, t in targets(board)]
    assert len(exprs) > 60
    result = promtool_rules(tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
    # The check is worth something only if promtool parses what it is given: the queries as Grafana stores
    # them ($__rate_interval not yet replaced) are not PromQL, and neither is a broken one.
    raw = [t["expr"] for board in boards().values() for _, t in targets(board) if "$__rate_interval" in t["expr"]]
    for bad in (raw[:1], ["max by (host (llamamon_loss)"]):
        result = promtool_rules(tmp_path, bad)
        assert result.returncode != 0
        assert "parse error" in result.stdout + result.stderr


# --- Grafana's schema ---------------------------------------------------------------------------------------

SCHEMA_DIR = REPO / "tests" / "grafana_schema"
TS_PRELUDE = """\
import type { Dashboard } from '@grafana/schema';
import type { FieldConfig, Options } from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
// JSON has no enums: each of the schema's string enums as the union of its values.
type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T
  : T extends ReadonlyArray<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;
"""


def typescript_check(tmp_path: Path, named: dict[str, dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    tsc = SCHEMA_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        missing_integration(f"{tsc} is missing (npm install --prefix {SCHEMA_DIR}; .ci/run does it)")
    lines = [TS_PRELUDE]
    for i, board in enumerate(named.values()):
        body = {k: v for k, v in board.items() if k not in ("__inputs", "__requires")}
        lines.append(f"export const dashboard{i}: Json<Dashboard> = {json.dumps(body)};")
        for panel in board["panels"]:
            if panel["type"] == "timeseries":
                lines.append(f"export const options{i}_{panel['id']}: Json<Options> = {json.dumps(panel['options'])};")
                custom = json.dumps(panel["fieldConfig"]["defaults"]["custom"])
                lines.append(f"export const custom{i}_{panel['id']}: Json<FieldConfig> = {custom};")
    (tmp_path / "check.ts").write_text("\n".join(lines) + "\n")
    if not (tmp_path / "node_modules").exists():
        os.symlink(SCHEMA_DIR / "node_modules", tmp_path / "node_modules")
    args = ["--noEmit", "--strict", "--skipLibCheck", "--target", "es2022", "--module", "esnext"]
    return subprocess.run(
        [str(tsc), *args, "--moduleResolution", "bundler", str(tmp_path / "check.ts")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_dashboards_match_grafanas_schema(tmp_path):
    result = typescript_check(tmp_path, boards())
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and the check rejects what Grafana's schema rejects: a misspelt field, a wrong type, a wrong enum.
    board = json.loads(json.dumps(boards()["llamamon-system.json"]))
    board["panels"][1]["gridPos"]["x"] = "0"
    board["panels"][2]["fieldConfig"]["defaults"]["units"] = board["panels"][2]["fieldConfig"]["defaults"].pop("unit")
    board["panels"][3]["options"]["tooltip"]["mode"] = "several"
    result = typescript_check(tmp_path, {"bad": board})
    errors = [line for line in result.stdout.splitlines() if "error TS" in line]
    assert result.returncode != 0
    assert len(errors) == 3, result.stdout


# --- a real Prometheus over real .prom files ------------------------------------------------------------------

HOSTS = {"node-a": "20261207T100000Z-node-a-aaaa", "node-b": "20261207T100000Z-node-b-bbbb"}
CATALOG_LABELS = {"gpu": ("0", "1"), "core": ("0",), "reason": ("sw_thermal",), "type": ("corrected",)}
CATALOG_LABELS |= {"channel": ("slack",), "cause": ("power",), "link": ("0",), "xid": ("79",), "device": ("cuda:0",)}


def _samples(tick: int) -> list[Sample]:
    """One of every catalog metric (counters growing, histograms observing), as a two-rank GPU job logs them."""
    out: list[Sample] = []
    for metric in catalog.METRICS:
        if metric.name in RUN_METRICS:
            continue  # the writer's own: from each sample's time and step, and write()'s alerts_firing
        value = float(tick + 1) if metric.kind == "counter" else 0.5
        if metric.kind == "histogram":
            out += [Sample(metric.name, ms, make_labels(model="m")) for ms in (20.0, 80.0, 400.0)]
        elif metric.group == "training":
            out += [Sample(metric.name, value, make_labels(rank=r), step=tick) for r in ("0", "1")]
        else:
            names = metric.labels or ()
            combos = [{}] if not names else [{n: v} for n in names[:1] for v in CATALOG_LABELS[n]]
            for combo in combos:
                extra = {n: CATALOG_LABELS[n][0] for n in names[1:]}
                out.append(Sample(metric.name, value, make_labels(**combo, **extra)))
    return out


@pytest.fixture(scope="module")
def fed_prometheus(node_exporter, prometheus) -> str:  # noqa: F811 - the fixtures imported above
    """Two hosts' runs and one watch file, rewritten until Prometheus has seen counters and histograms grow."""
    _, folder = node_exporter
    writers = [TextfileWriter(folder, host, run) for host, run in HOSTS.items()]
    watch = TextfileWriter(folder, "node-a", "watch", labels={"host": "node-a"})
    counter = catalog.BY_NAME["gpu_energy"].prometheus_name
    histogram = catalog.BY_NAME["inference_latency"].prometheus_name + "_count"
    grown = f"count(rate({counter}[1m]) > 0) > 0 and count(rate({histogram}[1m]) > 0) > 0"
    deadline = time.monotonic() + 60
    for tick in range(1000):
        for writer in writers:
            writer.write(_samples(tick), alerts_firing={"warning": tick % 2})
        watch.write([Sample("cpu_usage", 0.25), Sample("memory_usage", 0.5)])
        if tick >= 2 and query(prometheus.url, grown):
            break
        assert time.monotonic() < deadline, "Prometheus never scraped the files twice"
        time.sleep(0.5)
    return prometheus.url


def test_every_query_returns_data_from_the_textfile_export(fed_prometheus):
    base = fed_prometheus
    empty, nan = [], []
    for name, board in boards().items():
        for panel, target in targets(board):
            result = query(base, interpolate(target["expr"], ALL))
            if not result:
                empty.append(f"{name} {panel['title']}: {target['expr']}")
            elif any(math.isnan(float(r["value"][1])) for r in result):
                nan.append(f"{name} {panel['title']}: {target['expr']}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)
    assert not nan, "queries giving NaN:\n" + "\n".join(nan)
    # One host picked, as the host variable gives it: only that host's lines.
    (panel,) = [p for p in boards()["llamamon-system.json"]["panels"] if p["title"] == "cpu_usage"]
    one = query(base, interpolate(panel["targets"][0]["expr"], {**ALL, "host": "node-b"}))
    assert [r["metric"] for r in one] == [{"host": "node-b"}]
    (steps,) = [p for p in boards()["llamamon-training.json"]["panels"] if p["title"] == "seconds per step"]
    per_rank = query(base, interpolate(steps["targets"][0]["expr"], {**ALL, "host": "node-a", "rank": "1"}))
    assert [(r["metric"]["rank"], float(r["value"][1])) for r in per_rank] == [("1", 2.0)]


def label_values(base: str, definition: str, values: dict[str, str]) -> set[str]:
    """What Grafana's Prometheus data source lists for ``label_values(selector, label)``."""
    selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", definition).groups()
    params = urllib.parse.urlencode({"match[]": interpolate(selector, values)})
    return set(json.loads(http_get(f"{base}/api/v1/label/{label}/values?{params}"))["data"])


def test_template_variables_list_what_was_written(fed_prometheus):
    variables = {v["name"]: v for board in boards().values() for v in board["templating"]["list"]}
    assert label_values(fed_prometheus, variables["host"]["query"], ALL) >= set(HOSTS)
    assert label_values(fed_prometheus, variables["run"]["query"], {"host": "node-a"}) == {HOSTS["node-a"]}
    assert label_values(fed_prometheus, variables["rank"]["query"], ALL) == {"0", "1"}
    assert label_values(fed_prometheus, variables["gpu"]["query"], {"host": "node-b"}) == {"0", "1"}


RANKED_JOB = """
import time, llamamon
for i in range(10):
    llamamon.log(loss=1.0 / (i + 1), steps_per_second=4.0, step=i)
    time.sleep(0.1)
"""


def test_two_recorded_hosts_show_up_in_the_dashboards(node_exporter, fed_prometheus, tmp_path):  # noqa: F811
    """`llamamon record` on two "nodes" (LLAMAMON_HOST, one rank each) into the folder node_exporter reads."""
    _, folder = node_exporter
    config = tmp_path / "monitoring.yaml"
    config.write_text(
        f"monitoring:\n  textfile_dir: {json.dumps(str(folder))}\n  textfile_refresh: 0\n  textfile_grace: 1h\n"
    )
    jobs = []
    for host, rank in (("node-c", "0"), ("node-d", "1")):
        args = [
            "record",
            "--no-gpu",
            "--interval",
            "0.2",
            "--config",
            str(config),
            "--metrics-dir",
            str(tmp_path / host),
        ]
        env = llamamon_env(LLAMAMON_HOST=host, RANK=rank)
        jobs.append(
            subprocess.Popen(
                [sys.executable, "-m", "llamamon", *args, "--", sys.executable, "-c", RANKED_JOB],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    for job in jobs:
        _, err = job.communicate(timeout=120)
        assert job.returncode == 0, err.decode()
    variables = {v["name"]: v for board in boards().values() for v in board["templating"]["list"]}
    (loss,) = [p for p in boards()["llamamon-training.json"]["panels"] if p["title"] == "loss"]
    (cpu,) = [p for p in boards()["llamamon-system.json"]["panels"] if p["title"] == "cpu_usage"]

    both = {**ALL, "host": "node-c|node-d"}

    def last_losses() -> set[tuple[str, str, float]]:
        result = query(fed_prometheus, interpolate(loss["targets"][0]["expr"], both))
        return {(r["metric"]["host"], r["metric"]["rank"], float(r["value"][1])) for r in result}

    # Each file is rewritten as the job logs; Prometheus has the last one within a scrape or two.
    final = {("node-c", "0", 0.1), ("node-d", "1", 0.1)}
    wait_for(lambda: last_losses() == final, "Prometheus to scrape both recorded hosts' last files")
    assert {"node-c", "node-d"} <= label_values(fed_prometheus, variables["host"]["query"], ALL)
    assert label_values(fed_prometheus, variables["rank"]["query"], {**ALL, "host": "node-d"}) == {"1"}
    cpus = query(fed_prometheus, interpolate(cpu["targets"][0]["expr"], both))
    assert sorted(r["metric"]["host"] for r in cpus) == ["node-c", "node-d"]
