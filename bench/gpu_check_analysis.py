"""The verdicts of bench/gpu_check.py, from a recorded run's rows and what the CUDA job saw itself.

Pure functions over plain data (rows exported by ``llamamon export csv``, the job's JSON), stdlib only, so
they run under any python3 and are tested on made-up rows here, before a real GPU ever feeds them.
Each returns ``Verdict``s: PASS, FAIL or SKIP with the figure that decided it.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MIB = 1 << 20
TOLERANCE = 0.05  # the "within 5 %"
ENERGY_TOLERANCE = 0.10  # NVML's power is a ~1 s average: the ramps at start and end differ from the counter


@dataclass(frozen=True, slots=True)
class Row:
    time: float
    metric: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    verdict: str  # PASS, FAIL, SKIP
    figure: str
    detail: str = ""

    def line(self) -> str:
        text = f"{self.verdict:<4} {self.name}: {self.figure}"
        return f"{text} ({self.detail})" if self.detail else text

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def read_csv(path: Path) -> list[Row]:
    """The rows of ``llamamon export csv``: time,step,metric,value and one column per label."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            labels = {k: v for k, v in rec.items() if k not in ("time", "step", "metric", "value") and v}
            t = datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).timestamp()
            rows.append(Row(t, rec["metric"], float(rec["value"]), labels))
    return rows


def series(rows: Iterable[Row], metric: str, **labels: str) -> list[tuple[float, float]]:
    """(time, value) of one metric whose labels include ``labels``, in time order."""
    pts = [
        (r.time, r.value) for r in rows if r.metric == metric and all(r.labels.get(k) == v for k, v in labels.items())
    ]
    return sorted(pts)


def nearest(points: Sequence[tuple[float, float]], t: float) -> tuple[float, float] | None:
    return min(points, key=lambda p: abs(p[0] - t)) if points else None


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def within(name: str, got: float, want: float, tol: float, unit: str = "") -> Verdict:
    d = rel_diff(got, want)
    figure = f"{got:,.4g}{unit} vs {want:,.4g}{unit} ({d:.1%} apart, limit {tol:.0%})"
    return Verdict(name, "PASS" if d <= tol else "FAIL", figure)


def ticks(rows: Iterable[Row], t0: float = -math.inf, t1: float = math.inf) -> int:
    """Samples the recorder took (between t0 and t1): one cpu_usage row per tick."""
    return len({r.time for r in rows if r.metric == "cpu_usage" and t0 <= r.time <= t1})


def in_window(points: Sequence[tuple[float, float]], t0: float, t1: float) -> list[float]:
    return [v for t, v in points if t0 <= t <= t1]


def check_samples(rows: Sequence[Row], gpu: str, wanted: int = 20) -> Verdict:
    n = len(series(rows, "gpu_utilization", gpu=gpu))
    return Verdict("samples", "PASS" if n >= wanted else "FAIL", f"{n} GPU samples (want >= {wanted})")


def check_utilization(rows: Sequence[Row], gpu: str, job: dict[str, Any]) -> Verdict:
    busy = in_window(series(rows, "gpu_utilization", gpu=gpu), job["busy_from"] + 1.0, job["busy_to"])
    if not busy:
        return Verdict("utilization", "FAIL", "no gpu_utilization sample while the job was busy")
    mean = sum(busy) / len(busy)
    return Verdict("utilization", "PASS" if mean > 0.5 else "FAIL", f"mean {mean:.0%} over {len(busy)} busy samples")


def check_memory(rows: Sequence[Row], gpu: str, snap: dict[str, Any] | None) -> list[Verdict]:
    """Device memory used: llamamon's sample nearest the job's snapshot vs nvidia-smi and torch.cuda."""
    if not snap:
        return [Verdict("memory", "FAIL", "the job took no snapshot")]
    point = nearest(series(rows, "gpu_memory_used", gpu=gpu), snap["time"])
    if point is None:
        return [Verdict("memory", "FAIL", "no gpu_memory_used recorded")]
    out = []
    if snap.get("smi_memory_used_mib") is not None:
        out.append(within("memory vs nvidia-smi", point[1] / MIB, snap["smi_memory_used_mib"], TOLERANCE, " MiB"))
    out.append(within("memory vs torch.cuda.mem_get_info", point[1] / MIB, snap["torch_used"] / MIB, TOLERANCE, " MiB"))
    return out


def check_process_memory(rows: Sequence[Row], gpu: str, snap: dict[str, Any] | None) -> list[Verdict]:
    """The recorded tree's GPU memory vs nvidia-smi's compute apps; torch's reserved memory fits inside it."""
    if not snap:
        return [Verdict("process memory", "FAIL", "the job took no snapshot")]
    point = nearest(series(rows, "gpu_process_memory_used", gpu=gpu), snap["time"])
    if point is None:
        return [Verdict("process memory", "FAIL", "no gpu_process_memory_used recorded")]
    apps = snap.get("smi_apps") or []
    ours = [a for a in apps if a["pid"] == snap["pid"]] or apps  # in a container nvidia-smi shows host pids
    out = []
    if ours:
        want = sum(a["used_mib"] for a in ours)
        out.append(within("process memory vs nvidia-smi", point[1] / MIB, want, TOLERANCE, " MiB"))
    else:
        out.append(Verdict("process memory vs nvidia-smi", "SKIP", "nvidia-smi lists no compute process here"))
    reserved = snap["torch_reserved"]
    fits = reserved <= point[1]
    figure = f"torch reserved {reserved / MIB:,.0f} MiB <= process {point[1] / MIB:,.0f} MiB"
    out.append(Verdict("process memory holds torch's reserve", "PASS" if fits else "FAIL", figure))
    return out


def integrate(points: Sequence[tuple[float, float]]) -> float:
    return sum((t1 - t0) * (v0 + v1) / 2 for (t0, v0), (t1, v1) in itertools.pairwise(points))


def check_energy(rows: Sequence[Row], gpu: str) -> list[Verdict]:
    power = series(rows, "gpu_power", gpu=gpu)
    energy = series(rows, "gpu_energy", gpu=gpu)
    if not power:
        return [Verdict("power", "FAIL", "no gpu_power recorded")]
    low = min(v for _, v in power)
    out = [Verdict("power", "PASS" if low > 0 else "FAIL", f"min {low:.1f} W, max {max(v for _, v in power):.1f} W")]
    if len(energy) < 2:
        return [*out, Verdict("energy", "FAIL", "no gpu_energy counter recorded (or one sample)")]
    (t0, e0), (t1, e1) = energy[0], energy[-1]
    span = [(t, v) for t, v in power if t0 <= t <= t1]
    out.append(Verdict("energy", "PASS" if e1 - e0 > 0 else "FAIL", f"{(e1 - e0) / 3600:.3f} Wh over {t1 - t0:.1f} s"))
    out.append(within("energy vs integrated power", e1 - e0, integrate(span), ENERGY_TOLERANCE, " J"))
    return out


PLAUSIBLE = {
    "gpu_sm_clock": (200.0, 3500.0, " MHz"),
    "gpu_memory_clock": (400.0, 16000.0, " MHz"),
    "gpu_temperature": (15.0, 100.0, " °C"),
}


def check_plausible(rows: Sequence[Row], gpu: str, job: dict[str, Any]) -> list[Verdict]:
    out = []
    for metric, (lo, hi, unit) in PLAUSIBLE.items():
        values = in_window(series(rows, metric, gpu=gpu), job["busy_from"] + 1.0, job["busy_to"])
        if not values:
            out.append(Verdict(metric, "FAIL", "not recorded while the job was busy"))
            continue
        ok = all(lo <= v <= hi for v in values)
        figure = f"{min(values):,.0f}..{max(values):,.0f}{unit} (plausible {lo:,.0f}..{hi:,.0f})"
        out.append(Verdict(metric, "PASS" if ok else "FAIL", figure))
    limit = series(rows, "gpu_power_limit", gpu=gpu)
    power = series(rows, "gpu_power", gpu=gpu)
    if limit and power:
        top, cap = max(v for _, v in power), limit[-1][1]
        verdict = "PASS" if 0 < top <= cap * 1.1 else "FAIL"
        out.append(Verdict("power vs limit", verdict, f"max {top:.0f} W, limit {cap:.0f} W"))
    return out


def check_torch_figures(rows: Sequence[Row], snap: dict[str, Any] | None) -> list[Verdict]:
    """What the job logged through log_cuda_memory() against what it read itself."""
    reserved = series(rows, "torch_cuda_memory_reserved", device="cuda:0")
    if not reserved or not snap:
        return [Verdict("torch.cuda figures", "FAIL", "no torch_cuda_memory_reserved recorded from the job")]
    point = nearest(reserved, snap["time"])
    assert point is not None
    return [within("torch.cuda reserved (logged vs read)", point[1] / MIB, snap["torch_reserved"] / MIB, TOLERANCE)]


# Each GPU metric the NVML collector records -> the fields of llamamon/collectors/gpu*.py (the names it
# passes to Nvml.call/drop) whose entries in runs/<id>.json gpu.gpus[i].unavailable declare it missing: it
# is declared when every field of one alternative is there (clock events have a fallback function; the
# two ECC counts are dropped apart; NVLink is missing for no link or for an unanswered counter query).
UNAVAILABLE_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "gpu_utilization": (("utilization",),),
    "gpu_memory_usage": (("memory",),),
    "gpu_memory_used": (("memory",),),
    "gpu_memory_total": (("memory",),),
    "gpu_temperature": (("temperature",),),
    "gpu_power": (("power",),),
    "gpu_power_limit": (("power_limit",),),
    "gpu_energy": (("energy",),),
    "gpu_sm_clock": (("sm_clock",),),
    "gpu_memory_clock": (("memory_clock",),),
    "gpu_fan_speed": (("fan_speed",),),
    "gpu_clock_event": (("clock_events", "clock_events_legacy"),),
    "gpu_throttled": (("clock_events", "clock_events_legacy"),),
    "gpu_ecc_errors": (("ecc_corrected", "ecc_uncorrected"),),
    "gpu_process_memory_used": (("processes",),),
    "gpu_pcie_link_gen": (("pcie_link_gen",),),
    "gpu_pcie_link_gen_max": (("pcie_link_gen_max",),),
    "gpu_pcie_link_width": (("pcie_link_width",),),
    "gpu_pcie_link_width_max": (("pcie_link_width_max",),),
    "gpu_pcie_rx_throughput": (("pcie_rx",),),
    "gpu_pcie_tx_throughput": (("pcie_tx",),),
    "gpu_nvlink_rx_throughput": (("nvlink",), ("nvlink_throughput",)),
    "gpu_nvlink_tx_throughput": (("nvlink",), ("nvlink_throughput",)),
    "gpu_sm_activity": (("gpm",),),
    "gpu_tensor_activity": (("gpm",),),
    "gpu_dram_bandwidth_utilization": (("gpm",),),
    "gpu_xid_events": (("xid_events",),),
    "gpu_xid_errors": (("xid_events",),),
}
# Recorded only when something happens (one series per XID code seen): the total's series says it was asked.
ON_EVENT = {"gpu_xid_errors": "gpu_xid_events"}


def declared_unavailable(run_meta: dict[str, Any], gpu: str, metric: str) -> str | None:
    """Why the run's metadata says GPU ``gpu`` does not record ``metric`` (the collector's own words), or None."""
    device = next((d for d in run_meta.get("gpu", {}).get("gpus") or [] if str(d.get("index")) == gpu), {})
    missing = device.get("unavailable") or {}
    for fields in UNAVAILABLE_FIELDS.get(metric, ()):
        if all(f in missing for f in fields):
            return "; ".join(f"{f}: {missing[f]}" for f in fields)
    return None


def check_metrics_present(
    rows: Sequence[Row], names: Sequence[str], run_meta: dict[str, Any], gpu: str
) -> list[Verdict]:
    """Each catalog GPU metric: recorded for GPU ``gpu``, or declared unavailable for it in the run's metadata
    (``runs/<id>.json``: gpu.gpus[i].unavailable, what the collector found it cannot read, with the reason);
    anything else is a metric silently missing."""
    seen = {r.metric for r in rows if r.labels.get("gpu", gpu) == gpu}
    collector = run_meta.get("gpu") or {}
    out = []
    for name in names:
        why = declared_unavailable(run_meta, gpu, name)
        if name in seen:
            out.append(Verdict(f"metric {name}", "PASS", "recorded"))
        elif name in ON_EVENT and ON_EVENT[name] in seen:
            out.append(Verdict(f"metric {name}", "PASS", f"none occurred ({ON_EVENT[name]} recorded)"))
        elif name in UNAVAILABLE_FIELDS and not collector.get("available"):
            out.append(Verdict(f"metric {name}", "FAIL", f"GPU collector off: {collector.get('reason')}"))
        elif why is not None:
            out.append(Verdict(f"metric {name}", "PASS", "declared unavailable", why[:160]))
        else:
            out.append(Verdict(f"metric {name}", "FAIL", "neither recorded nor declared unavailable"))
    return out


def reported_mfu(markdown: str) -> float | None:
    """The MFU key figure of a one-run ``llamamon report --markdown``, as a ratio."""
    found = re.search(r"^\|\s*MFU\s*\|\s*([\d.]+)%", markdown, re.MULTILINE)
    return float(found.group(1)) / 100 if found else None


def check_mfu(markdown: str, job: dict[str, Any], peak_tflops: float | None) -> list[Verdict]:
    """The report's MFU against the job's own tokens/s x FLOPs per token over the GPU's peak."""
    if peak_tflops is None:
        return [Verdict("MFU", "SKIP", f"{job.get('device_name')} is not in llamamon/gpu_peaks.py")]
    (t0, k0), (t1, k1) = job["logged_first"], job["logged_last"]
    want = (k1 - k0) / (t1 - t0) * job["flops_per_token"] / (peak_tflops * 1e12)
    got = reported_mfu(markdown)
    events = job["matmul_tflops"] / peak_tflops
    if got is None:
        return [Verdict("MFU", "FAIL", f"no MFU key figure in the report (job: {want:.1%})")]
    ok = abs(got - want) <= max(TOLERANCE * want, 0.001)  # the report prints one decimal of a percent
    figure = f"report {got:.1%} vs job {want:.1%}; matmuls alone {events:.1%} by CUDA events"
    return [Verdict("MFU", "PASS" if ok else "FAIL", figure)]


def check_recorder_cpu(on: dict[str, float], off: dict[str, float], limit_ms: float = 10.0) -> Verdict:
    """CPU per sample of the recorder itself with the GPU collector and without (same check, same job), over
    the job's busy loop: the job reads its parent's CPU time as the loop starts and ends."""
    if not on.get("samples") or not off.get("samples") or on["cpu_seconds"] is None or off["cpu_seconds"] is None:
        return Verdict("recorder CPU per sample", "FAIL", f"not measured (GPU on {on}, off {off})")
    per_on = on["cpu_seconds"] / on["samples"] * 1000
    per_off = off["cpu_seconds"] / off["samples"] * 1000
    ratio = per_on / per_off if per_off > 0 else math.inf
    figure = f"GPU on {per_on:.2f} ms, off {per_off:.2f} ms, ratio {ratio:.2f} (GPU share limit {limit_ms} ms)"
    return Verdict("recorder CPU per sample", "PASS" if per_on - per_off <= limit_ms else "FAIL", figure)
