"""The .prom files against the real tools: promtool's linter, node_exporter's textfile collector, Prometheus."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llamamon import catalog
from llamamon.prometheus.text import parse
from llamamon.prometheus.textfile import TextfileWriter
from llamamon.samples import Sample, make_labels
from tests.conftest import require_binary, run_llamamon

pytestmark = pytest.mark.integration

HOST = "gpu-box"
RUN_ID = "20260901T101500Z-gpu-box-3f2a"
NASTY = ['quote " inside', "back\\slash", "new\nline", "ünïcødé ✓ 模型", "tab\tand\rcr", "}{,=", ""]


def _system() -> list[Sample]:
    return [
        Sample("cpu_usage", 0.42),
        *(Sample("cpu_core_usage", 0.1 * i, make_labels(core=i)) for i in range(4)),
        Sample("memory_used", 8.5e9),
        Sample("disk_write_throughput", 1.5e6),
        Sample("load1", 1.25),
        Sample("process_cpu_usage", 1.5),
        Sample("process_memory_rss", 2.0e9),
    ]


def _gpu() -> list[Sample]:
    out = []
    for gpu in ("0", "1"):
        labels = make_labels(gpu=gpu, name="NVIDIA H100 80GB HBM3")
        out += [
            Sample("gpu_utilization", 0.97, labels),
            Sample("gpu_memory_used", 7.0e10, labels),
            Sample("gpu_temperature", 71.0, labels),
            Sample("gpu_power", 450.0, labels),
            Sample("gpu_energy", 1.2e7, labels),
            Sample("gpu_sm_clock", 1980.0, labels),
            Sample("gpu_clock_event", 1.0, make_labels(gpu=gpu, reason="sw_thermal")),
            Sample("gpu_ecc_errors", 0.0, make_labels(gpu=gpu, type="corrected")),
        ]
    return out


def _training() -> list[Sample]:
    rank = make_labels(rank=0)
    return [
        Sample("loss", 2.31, rank, step=120),
        Sample("val_loss", 2.6, rank, step=120),
        Sample("lr", 3e-4, rank, step=120),
        Sample("grad_norm", math.inf, rank, step=120),
        Sample("steps_per_second", 4.2, rank),
        Sample("step_time_ms", 238.0, rank),
        Sample("tokens_total", 1.2e6, rank),
        Sample("accuracy/top1", math.nan, make_labels(rank=0, split="val")),
    ]


def _inference() -> list[Sample]:
    model = make_labels(model="llama-3-8b")
    return [
        *(Sample("inference_latency", v, model) for v in (12.0, 80.0, 250.0, 1900.0, 45_000.0)),
        *(Sample("ttft", v, model) for v in (5.0, 30.0, 120.0)),
        Sample("token_throughput", 950.0, model),
        Sample("kv_cache_usage", 0.63, model),
        Sample("batch_queue_size", 3.0, model),
        Sample("inference_latency", 10.0, make_labels(model="llama-3-8b", request_id="req-1")),
    ]


def _nasty() -> list[Sample]:
    return [
        *(Sample("loss", float(i), make_labels(tag=v, **{"weird label!": v})) for i, v in enumerate(NASTY)),
        *(Sample("ttft", 50.0, make_labels(model=v)) for v in NASTY),
        Sample("gauge_counter_total_ms", 1.0, make_labels(le="0.5", quantile="0.9", run="shadowed", camelCase="x")),
    ]


def _every_catalog_metric() -> list[Sample]:
    return [Sample(m.name, 1.0, make_labels(gpu=0)) for m in catalog.METRICS]


RUNS: dict[str, Callable[[], list[Sample]]] = {
    "system-only": _system,
    "gpu": lambda: _system() + _gpu(),
    "training": lambda: _system() + _training(),
    "inference-histograms": lambda: _system() + _inference(),
    "nasty-labels": _nasty,
    "every-catalog-metric": _every_catalog_metric,
}


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    with path.open("rb") as fh:
        return subprocess.run(
            [promtool, "check", "metrics"], stdin=fh, capture_output=True, text=True, timeout=30, check=False
        )


@pytest.mark.parametrize("kind", list(RUNS))
def test_promtool_finds_no_lint_problem(tmp_path, kind):
    writer = TextfileWriter(tmp_path, HOST, RUN_ID, clock=lambda: 1_790_000_000.0)
    writer.write(RUNS[kind](), alerts_firing={"warning": 1})
    result = promtool_check(writer.path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    writer.finish(grace=60)
    result = promtool_check(writer.path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_promtool_would_catch_a_lint_problem(tmp_path):
    # The check above is only worth something if promtool reports what it says it does.
    bad = tmp_path / "bad.prom"
    bad.write_text("# HELP llamamon_x_ms x\n# TYPE llamamon_x_ms gauge\nllamamon_x_ms 1\n")
    result = promtool_check(bad)
    assert result.returncode != 0
    assert "abbreviated units" in result.stdout + result.stderr


# --- node_exporter and Prometheus ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTPError holds the open connection (Prometheus answers 503 while starting)
        raise OSError(f"HTTP {exc.code} from {url}") from None


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``probe`` until it returns something truthy (exceptions count as not yet), or fail."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except Exception as exc:  # noqa: BLE001 - not up yet; remembered for the failure message
            last = repr(exc)
        else:
            if result:
                return result
            last = result
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _start(args: list[str], log: Path, ready_url: str, what: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        return bool(http_get(ready_url))

    try:
        wait_for(ready, f"{what} to listen")
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_prometheus(
    home: Path, config: str, what: str = "Prometheus", *flags: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A real Prometheus with this prometheus.yml in ``home`` (made if need be), listening on loopback: (process, URL)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "prometheus.yml").write_text(config)
    address = f"127.0.0.1:{free_port()}"
    args = [
        require_binary("prometheus"),
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address={address}",
        *flags,
    ]
    return _start(args, home / "prometheus.log", f"http://{address}/-/ready", what), f"http://{address}"


@pytest.fixture(scope="module")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    binary = require_binary("prometheus-node-exporter", "node_exporter")
    folder = tmp_path_factory.mktemp("textfile")
    address = f"127.0.0.1:{free_port()}"
    args = [
        binary,
        f"--web.listen-address={address}",
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={folder}",
    ]
    proc = _start(args, folder.parent / "node_exporter.log", f"http://{address}/metrics", "node_exporter")
    yield address, folder
    _stop(proc)


@dataclass(frozen=True)
class PrometheusServer:
    url: str
    rules_dir: Path  # its rule_files glob reads *.yml here; POST /-/reload after adding one


@pytest.fixture(scope="module")
def prometheus(node_exporter: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    home = tmp_path_factory.mktemp("prometheus")
    config = (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{home / 'rules'}/*.yml']\n"
        "scrape_configs:\n  - job_name: node\n    static_configs:\n"
        f"      - targets: ['{node_exporter[0]}']\n"
    )
    (home / "rules").mkdir()
    proc, url = start_prometheus(home, config, "Prometheus", "--web.enable-lifecycle")
    yield PrometheusServer(url, home / "rules")
    _stop(proc)


def scrape(address: str) -> dict[str, Any]:
    return {f.name: f for f in parse(http_get(f"http://{address}/metrics"))}


def test_node_exporter_serves_the_values_while_files_are_rewritten(node_exporter):
    address, folder = node_exporter
    writer = TextfileWriter(folder, HOST, RUN_ID)
    watch = TextfileWriter(folder, HOST, "watch", labels={"host": HOST})
    for tick in range(1, 16):
        writer.write([*_gpu(), *_inference(), *_nasty(), Sample("loss", 1.0 / tick, step=tick)])
        watch.write([Sample("cpu_usage", tick / 100)], alerts_firing={"warning": tick % 2})
        families = scrape(address)
        assert families["node_textfile_scrape_error"].points[0].value == 0.0
        # node_exporter gives every series of a family the same label names ("" where absent).
        (loss,) = families["llamamon_loss"].labels_of(run=RUN_ID, host=HOST, tag="")
        assert loss.value == 1.0 / tick
        assert families["llamamon_step"].labels_of(run=RUN_ID)[0].value == tick
        assert families["llamamon_cpu_usage_ratio"].labels_of(host=HOST)[-1].value == tick / 100
        tags = {dict(p.labels).get("tag") for p in families["llamamon_loss"].points}
        assert set(NASTY) - {""} <= tags  # label values survive node_exporter's parser and re-exposition
    # Scrapes racing with rewrites never see a half-written file.
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            writer.write([*_gpu(), *_inference(), Sample("loss", 0.5)])

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        for _ in range(25):
            families = scrape(address)
            assert families["node_textfile_scrape_error"].points[0].value == 0.0
            assert len(families["llamamon_gpu_utilization_ratio"].points) == 2
    finally:
        stop.set()
        thread.join()
    writer.finish(grace=60)
    assert scrape(address)["llamamon_run_active"].labels_of(run=RUN_ID)[0].value == 0.0
    mtimes = scrape(address)["node_textfile_mtime_seconds"].points
    assert {dict(p.labels)["file"].rsplit("/", 1)[-1] for p in mtimes} >= {writer.path.name, watch.path.name}


def query(base: str, promql: str) -> list[dict[str, Any]]:
    body = json.loads(http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_llamamon_values_through_node_exporter(node_exporter, prometheus):
    base = prometheus.url
    _, folder = node_exporter
    run = "20260901T111111Z-gpu-box-beef"
    writer = TextfileWriter(folder, HOST, run)
    writer.write([Sample("gpu_sm_clock", 1500.0, make_labels(gpu="0")), Sample("loss", 0.75, step=9)])
    writer.write(Sample("ttft", v, make_labels(model='m "q"')) for v in (20.0, 40.0, 3000.0))

    def loss() -> list[dict[str, Any]]:
        return query(base, f'llamamon_loss{{run="{run}"}}')

    (result,) = wait_for(loss, "Prometheus to scrape llamamon_loss")
    assert result["metric"]["host"] == HOST
    assert result["metric"]["job"] == "node"
    assert float(result["value"][1]) == 0.75
    (clock,) = query(base, f'llamamon_gpu_sm_clock_hertz{{run="{run}",gpu="0"}}')
    assert float(clock["value"][1]) == 1.5e9
    (p50,) = query(base, f'histogram_quantile(0.5, llamamon_time_to_first_token_seconds_bucket{{run="{run}"}})')
    assert 0.025 <= float(p50["value"][1]) <= 0.05
    assert p50["metric"]["model"] == 'm "q"'


def test_exported_rules_go_pending_then_firing_in_prometheus(node_exporter, prometheus, tmp_path):
    config = tmp_path / "monitoring.yaml"
    config.write_text(
        "monitoring:\n  update_frequency: 1\n"
        "alerts:\n  rules:\n    loss_high:\n      condition: loss > 5\n      severity: critical\n      for: 3s\n"
    )
    rules_dir = prometheus.rules_dir
    exported = run_llamamon(
        "alerts", "export", "--config", str(config), "-o", str(rules_dir / "llamamon.yml"), cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr.decode()
    check = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(rules_dir / "llamamon.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    urllib.request.urlopen(urllib.request.Request(f"{prometheus.url}/-/reload", method="POST"), timeout=5).close()

    def loaded() -> bool:
        groups = json.loads(http_get(f"{prometheus.url}/api/v1/rules"))["data"]["groups"]
        return any(r["name"] == "loss_high" for g in groups for r in g["rules"])

    wait_for(loaded, "Prometheus to load the exported rules")

    _, folder = node_exporter
    hot, calm = "20260901T121212Z-gpu-box-aaaa", "20260901T121212Z-gpu-box-bbbb"
    TextfileWriter(folder, HOST, hot).write([Sample("loss", 10.0, step=5)])
    TextfileWriter(folder, HOST, calm).write([Sample("loss", 1.0, step=5)])
    seen: list[str] = []

    def state() -> str | None:
        alerts = json.loads(http_get(f"{prometheus.url}/api/v1/alerts"))["data"]["alerts"]
        mine = [a for a in alerts if a["labels"]["alertname"] == "loss_high"]
        assert all(a["labels"]["run"] == hot for a in mine), mine  # the calm run never alerts
        if mine and (not seen or seen[-1] != mine[0]["state"]):
            seen.append(mine[0]["state"])
        return mine[0]["state"] == "firing" if mine else None

    wait_for(state, "loss_high to fire", timeout=20)
    assert seen == ["pending", "firing"]


def test_exported_rules_fire_only_while_the_run_is_live(node_exporter, prometheus, tmp_path):
    """The issue's crashed run: its file keeps ``batch_queue_size 166``; once it says run_active 0, nothing fires."""
    config = tmp_path / "monitoring.yaml"
    config.write_text(
        "monitoring:\n  update_frequency: 1\n"
        "alerts:\n  builtin: {loss_plateau: false, train_loss_plateau: false}\n  rules:\n"
        "    queue_live_only:\n      condition: batch_queue_size > 100\n"
        "    memory_live_only:\n      condition: memory_usage > 0.9\n"
    )
    target = prometheus.rules_dir / "live_only.yml"
    exported = run_llamamon("alerts", "export", "--config", str(config), "-o", str(target), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode()
    urllib.request.urlopen(urllib.request.Request(f"{prometheus.url}/-/reload", method="POST"), timeout=5).close()

    def loaded() -> bool:
        groups = json.loads(http_get(f"{prometheus.url}/api/v1/rules"))["data"]["groups"]
        return {"queue_live_only", "memory_live_only"} <= {r["name"] for g in groups for r in g["rules"]}

    wait_for(loaded, "Prometheus to load the exported rules")
    _, folder = node_exporter
    host, crashed, live = "queue-box", "20260901T131313Z-queue-box-dead", "20260901T131313Z-queue-box-live"
    ended = TextfileWriter(folder, host, crashed)
    ended.write([Sample("batch_queue_size", 166.0)])
    # A finished run whose file is still there (its grace, or left by a crash): run_active 0, values frozen.
    # Written before the live run's file, so every scrape that sees the live run sees this one.
    ended.finish(grace=3600)
    running = TextfileWriter(folder, host, live)
    running.write([Sample("batch_queue_size", 166.0)])
    watch = TextfileWriter(folder, host, "watch", labels={"host": host})
    watch.write([Sample("memory_usage", 0.95)])

    def mine() -> list[dict[str, Any]]:
        alerts = json.loads(http_get(f"{prometheus.url}/api/v1/alerts"))["data"]["alerts"]
        names = ("queue_live_only", "memory_live_only")  # (llamamon_watch_down fires once watch says 0)
        found = [a for a in alerts if a["labels"].get("host") == host and a["labels"]["alertname"] in names]
        assert all(a["labels"].get("run") != crashed for a in found), found  # the finished run never alerts
        return found

    def firing() -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"].get("run", "")) for a in mine() if a["state"] == "firing"}

    wait_for(
        lambda: firing() == {("queue_live_only", live), ("memory_live_only", "")}, "the live run and watch to fire"
    )
    (dead,) = query(prometheus.url, f'llamamon_batch_queue_size{{run="{crashed}"}}')
    assert float(dead["value"][1]) == 166.0  # Prometheus has the crashed run's frozen value, and ignores it
    deadline = time.monotonic() + 3  # a few more evaluations (every 1 s) of the same series
    while time.monotonic() < deadline:
        mine()
        time.sleep(0.2)
    running.finish(grace=3600)
    watch.finish(grace=3600)
    assert b"llamamon_run_active{host=" in running.path.read_bytes()  # the files stay, saying 0
    wait_for(lambda: not mine(), "the alerts to end once the run and watch say run_active 0")


def test_scraped_counters_keep_one_total_and_pass_promtool(tmp_path):
    from llamamon.collectors.scrape import ScrapeState

    served = (
        "# TYPE vllm:generation_tokens counter\n"
        'vllm:generation_tokens_total{model_name="m"} 120\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="m"} 3\n'
    )
    samples = ScrapeState().convert(parse(served), 1_790_000_000.0, (("instance", "127.0.0.1:8000"),))
    writer = TextfileWriter(tmp_path, HOST, RUN_ID, clock=lambda: 1_790_000_000.0)
    writer.write(samples)
    body = writer.path.read_text()
    assert "# TYPE llamamon_vllm_generation_tokens_total counter\n" in body
    assert "totals" not in body
    result = promtool_check(writer.path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_exported_watch_down_rule_fires_for_a_stale_or_vanished_watch(node_exporter, prometheus, tmp_path):
    config = tmp_path / "monitoring.yaml"
    config.write_text("monitoring:\n  update_frequency: 1\nalerts:\n  builtin: {}\n  rules: {}\n")
    target = prometheus.rules_dir / "watch_down.yml"
    exported = run_llamamon("alerts", "export", "--config", str(config), "-o", str(target), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode()
    urllib.request.urlopen(urllib.request.Request(f"{prometheus.url}/-/reload", method="POST"), timeout=5).close()
    _, folder = node_exporter
    hung = TextfileWriter(folder, "hung-box", "watch", labels={"host": "hung-box"}, clock=lambda: time.time() - 600)
    hung.write([Sample("cpu_usage", 0.5)])  # its last sample is 10 minutes old: watch is stuck (or was killed)
    gone = TextfileWriter(folder, "gone-box", "watch", labels={"host": "gone-box"})
    gone.write([Sample("cpu_usage", 0.5)])
    fresh = TextfileWriter(folder, "fresh-box", "watch", labels={"host": "fresh-box"})
    fresh.write([Sample("cpu_usage", 0.5)])

    def down() -> set[str]:
        alerts = json.loads(http_get(f"{prometheus.url}/api/v1/alerts"))["data"]["alerts"]
        hosts = {a["labels"]["host"] for a in alerts if a["labels"]["alertname"] == "llamamon_watch_down"}
        assert "fresh-box" not in hosts  # a live watch is never down
        return hosts & {"hung-box", "gone-box"}

    wait_for(lambda: down() == {"hung-box"}, "the stuck watch to be reported down")
    wait_for(lambda: query(prometheus.url, 'llamamon_run_active{host="gone-box"}'), "Prometheus to see gone-box")
    assert down() == {"hung-box"}
    gone.finish()  # watch exited: its file leaves the folder
    assert not gone.path.exists()
    wait_for(lambda: down() == {"hung-box", "gone-box"}, "the vanished watch to be reported down")


def test_honor_labels_keeps_the_scraped_servers_instance(node_exporter, prometheus, tmp_path):
    """A scraped server's series carry its ``instance``; the README's ``honor_labels: true`` keeps it as is."""
    _, folder = node_exporter
    run = "20260901T141414Z-gpu-box-inst"
    writer = TextfileWriter(folder, HOST, run)
    writer.write([Sample("batch_queue_size", 7.0, make_labels(instance="127.0.0.1:8000", model="m"))])
    config = (
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: node\n    honor_labels: true\n    static_configs:\n"
        f"      - targets: ['{node_exporter[0]}']\n"
    )
    honoring, url = start_prometheus(tmp_path / "honoring", config, "Prometheus (honor_labels)")
    try:
        selector = f'llamamon_batch_queue_size{{run="{run}"}}'
        (kept,) = wait_for(lambda: query(url, selector), "the honoring Prometheus to scrape")
        assert kept["metric"]["instance"] == "127.0.0.1:8000"
        assert "exported_instance" not in kept["metric"]
        # Without it (the default), Prometheus renames the label and puts node_exporter's address in its place.
        (renamed,) = wait_for(lambda: query(prometheus.url, selector), "the default Prometheus to scrape")
        assert renamed["metric"]["exported_instance"] == "127.0.0.1:8000"
        assert renamed["metric"]["instance"] == node_exporter[0]
        # The llamamon series that have no instance of their own still get node_exporter's.
        (active,) = query(url, f'llamamon_run_active{{run="{run}"}}')
        assert active["metric"]["instance"] == node_exporter[0]
    finally:
        _stop(honoring)
