"""THE metric catalog: every built-in metric's name, unit, kind, store group and help, written once.

Collectors emit these names, the store stores them, rules parse against them, the Prometheus exporter
derives ``llamamon_<name>_<base unit>`` (and ``_total`` for counters) from them and the report labels
its axes from them. Names a job logs that are not here are still stored and usable; they just have no
unit. Nothing else in llamamon may spell a metric's unit or help text.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Literal

from llamamon.errors import closest

Kind = Literal["gauge", "counter", "histogram"]
Group = Literal["system", "process", "gpu", "training", "inference", "custom", "run"]

GROUPS: tuple[str, ...] = ("system", "process", "gpu", "training", "inference", "custom")


@dataclass(frozen=True, slots=True)
class Unit:
    """A stored unit and how Prometheus wants it: base-unit suffix and the factor to get there."""

    name: str
    prometheus_suffix: str
    to_base: float
    axis_label: str


UNITS: dict[str, Unit] = {
    u.name: u
    for u in (
        Unit("ratio", "ratio", 1.0, "ratio (0–1)"),
        Unit("bytes", "bytes", 1.0, "bytes"),
        Unit("bytes_per_second", "bytes_per_second", 1.0, "bytes/s"),
        Unit("seconds", "seconds", 1.0, "s"),
        Unit("milliseconds", "seconds", 1e-3, "ms"),
        Unit("celsius", "celsius", 1.0, "°C"),
        Unit("watts", "watts", 1.0, "W"),
        Unit("joules", "joules", 1.0, "J"),
        Unit("megahertz", "hertz", 1e6, "MHz"),
        Unit("cores", "cores", 1.0, "CPU cores"),
        Unit("per_second", "per_second", 1.0, "1/s"),
        Unit("timestamp", "timestamp_seconds", 1.0, "time"),
        Unit("", "", 1.0, ""),
    )
}


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    kind: Kind
    group: Group
    help: str
    resolution: float | None = None  # step the built-in collector rounds to (see quantize); None: exact
    # Label names the built-in collector puts on it, besides host and run; None where the job or a scraped
    # server chooses them. The rule exporter matches two metrics on these, as llamamon's engine does.
    labels: tuple[str, ...] | None = None

    @property
    def prometheus_name(self) -> str:
        return prometheus_name(self.name, self.unit, self.kind)

    @property
    def axis_label(self) -> str:
        label = UNITS[self.unit].axis_label
        return f"{self.name} ({label})" if label else self.name


@functools.lru_cache(maxsize=4096)  # Why: the .prom export asks for every series' name on every tick
def prometheus_name(name: str, unit: str, kind: str) -> str:
    """``llamamon_`` + snake name + base-unit suffix (+ ``_total`` for counters), per Prometheus conventions."""
    base = "llamamon_" + sanitize_name(name)
    suffix = UNITS[unit].prometheus_suffix if unit in UNITS else ""
    if suffix and not base.endswith("_" + suffix):
        base += "_" + suffix
    if kind == "counter" and not base.endswith("_total"):
        base += "_total"
    return base


_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@functools.lru_cache(maxsize=4096)
def sanitize_name(name: str) -> str:
    """Any metric name a job logs -> a valid Prometheus/Parquet-friendly snake_case name."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    clean = _INVALID.sub("_", snake).strip("_").lower()
    clean = re.sub(r"_+", "_", clean)
    if not clean or clean[0].isdigit():
        clean = "m_" + clean
    return clean


# Label names by group (what the collectors of that group put on every metric), and the exceptions.
_GROUP_LABELS: dict[str, tuple[str, ...]] = {"system": (), "process": (), "gpu": ("gpu",), "run": ()}
_LABELS = {
    "cpu_core_usage": ("core",),
    "gpu_clock_event": ("gpu", "reason"),
    "gpu_ecc_errors": ("gpu", "type"),
    "gpu_throttled": ("gpu", "cause"),
    "gpu_nvlink_rx_throughput": ("gpu", "link"),
    "gpu_nvlink_tx_throughput": ("gpu", "link"),
    "gpu_xid_errors": ("gpu", "xid"),
    "alerts_firing": ("severity",),
    "notification_failures": ("channel",),
}


def _m(name: str, unit: str, kind: Kind, group: Group, help: str, resolution: float | None = None) -> Metric:
    return Metric(name, unit, kind, group, help, resolution, _LABELS.get(name, _GROUP_LABELS.get(group)))


# Resolutions: what each built-in collector's source really measures, as the largest power of two not
# coarser than it, so that (a) no two readings the source can tell apart ever collapse, (b) a value shown
# with the source's own decimals (90 % from NVML, 0.1 % from psutil, 3.26 from /proc/loadavg, 399.488 W)
# still reads exactly that, off by at most half a step, and (c) the low mantissa bits of every stored
# float64 are zero, which is what lets BYTE_STREAM_SPLIT + zstd store them in ~1-2 bytes instead of 7.
# Decimal rounding (0.123) keeps a full noisy mantissa and would save nothing (bench/storage.py).
PERMILLE = 2.0**-10  # 0.000977 <= psutil's 0.1 %, NVML's 1 % and 1 mW / 1 mJ (as W / J)
# The host-wide CPU share is busy / total CPU-time ticks (1/100 s each) over all cores, so its real step
# shrinks with the core count: 2**-14 (0.006 %) is one tick of a 160-core machine over 1 s. One core's
# share and the process tree's cores are one tick over the interval: 2**-10 holds it up to 10 s intervals.
CPU_TICK = 2.0**-14
HUNDREDTH = 2.0**-7  # 0.0078 <= /proc/loadavg's two decimals
WHOLE = 1.0  # bytes and byte rates, whole degrees, MHz, counts


METRICS: tuple[Metric, ...] = (
    # system (psutil), host-wide
    _m("cpu_usage", "ratio", "gauge", "system", "CPU busy time across all cores, 0..1.", CPU_TICK),
    _m("cpu_core_usage", "ratio", "gauge", "system", "CPU busy time of one core (label core), 0..1.", PERMILLE),
    _m("memory_usage", "ratio", "gauge", "system", "Share of physical memory in use, 0..1.", PERMILLE),
    _m("memory_used", "bytes", "gauge", "system", "Physical memory in use.", WHOLE),
    _m("memory_available", "bytes", "gauge", "system", "Physical memory available to new processes.", WHOLE),
    _m("swap_usage", "ratio", "gauge", "system", "Share of swap in use, 0..1.", PERMILLE),
    _m("swap_used", "bytes", "gauge", "system", "Swap in use.", WHOLE),
    _m("disk_usage", "ratio", "gauge", "system", "Share of the metrics folder's filesystem in use, 0..1.", PERMILLE),
    _m("disk_read_throughput", "bytes_per_second", "gauge", "system", "Bytes read from disks per second.", WHOLE),
    _m("disk_write_throughput", "bytes_per_second", "gauge", "system", "Bytes written to disks per second.", WHOLE),
    _m(
        "network_throughput",
        "bytes_per_second",
        "gauge",
        "system",
        "Network bytes received plus sent per second.",
        WHOLE,
    ),
    _m("network_rx_throughput", "bytes_per_second", "gauge", "system", "Network bytes received per second.", WHOLE),
    _m("network_tx_throughput", "bytes_per_second", "gauge", "system", "Network bytes sent per second.", WHOLE),
    _m("load1", "", "gauge", "system", "Load average over 1 minute.", HUNDREDTH),
    _m("load5", "", "gauge", "system", "Load average over 5 minutes.", HUNDREDTH),
    _m("load15", "", "gauge", "system", "Load average over 15 minutes.", HUNDREDTH),
    # process tree of the recorded command
    _m("process_cpu_usage", "cores", "gauge", "process", "CPU used by the recorded process tree, in cores.", PERMILLE),
    _m("process_memory_rss", "bytes", "gauge", "process", "Resident memory of the recorded process tree.", WHOLE),
    _m("process_threads", "", "gauge", "process", "Threads in the recorded process tree.", WHOLE),
    _m("process_tree_size", "", "gauge", "process", "Processes in the recorded process tree.", WHOLE),
    _m(
        "process_io_read_throughput",
        "bytes_per_second",
        "gauge",
        "process",
        "Bytes the process tree read per second.",
        WHOLE,
    ),
    _m(
        "process_io_write_throughput",
        "bytes_per_second",
        "gauge",
        "process",
        "Bytes the process tree wrote per second.",
        WHOLE,
    ),
    # GPU (NVML), label gpu
    _m("gpu_utilization", "ratio", "gauge", "gpu", "Share of time a kernel ran on the GPU, 0..1.", PERMILLE),
    _m("gpu_memory_usage", "ratio", "gauge", "gpu", "Share of GPU memory in use, 0..1.", PERMILLE),
    _m("gpu_memory_used", "bytes", "gauge", "gpu", "GPU memory in use.", WHOLE),
    _m("gpu_memory_total", "bytes", "gauge", "gpu", "GPU memory installed.", WHOLE),
    _m("gpu_temperature", "celsius", "gauge", "gpu", "GPU core temperature.", WHOLE),
    _m("gpu_power", "watts", "gauge", "gpu", "GPU power draw.", PERMILLE),
    _m("gpu_power_limit", "watts", "gauge", "gpu", "GPU power management limit.", PERMILLE),
    _m("gpu_energy", "joules", "counter", "gpu", "GPU energy used since the driver loaded.", PERMILLE),
    _m("gpu_sm_clock", "megahertz", "gauge", "gpu", "GPU SM clock.", WHOLE),
    _m("gpu_memory_clock", "megahertz", "gauge", "gpu", "GPU memory clock.", WHOLE),
    _m(
        "gpu_clock_event",
        "",
        "gauge",
        "gpu",
        "1 while a clock-event (throttle) reason is active (label reason).",
        WHOLE,
    ),
    _m(
        "gpu_ecc_errors",
        "",
        "counter",
        "gpu",
        "ECC errors since the driver loaded (label type: corrected, uncorrected).",
        WHOLE,
    ),
    _m("gpu_process_memory_used", "bytes", "gauge", "gpu", "GPU memory used by the recorded process tree.", WHOLE),
    _m(
        "gpu_fan_speed",
        "ratio",
        "gauge",
        "gpu",
        "Fan speed the driver asks for, as a share of the fan's maximum (may pass 1); none on passive boards.",
        PERMILLE,
    ),
    _m(
        "gpu_throttled",
        "",
        "gauge",
        "gpu",
        "1 while clocks are held down for power (label cause=power: sw_power_cap, hw_power_brake_slowdown) or"
        " heat (cause=thermal: sw_thermal_slowdown, hw_thermal_slowdown); see gpu_clock_event for all reasons.",
        WHOLE,
    ),
    _m(
        "gpu_pcie_link_gen",
        "",
        "gauge",
        "gpu",
        "PCIe generation the link runs at now (drops at idle on many boards).",
        WHOLE,
    ),
    _m("gpu_pcie_link_gen_max", "", "gauge", "gpu", "Highest PCIe generation this GPU and its slot allow.", WHOLE),
    _m(
        "gpu_pcie_link_width",
        "",
        "gauge",
        "gpu",
        "PCIe lanes the link runs with now (below the max: a downgrade).",
        WHOLE,
    ),
    _m("gpu_pcie_link_width_max", "", "gauge", "gpu", "Most PCIe lanes this GPU and its slot allow.", WHOLE),
    _m(
        "gpu_pcie_rx_throughput",
        "bytes_per_second",
        "gauge",
        "gpu",
        "PCIe bytes per second into the GPU: the interval's mean from NVML's PCIe byte counters where the driver has"
        " them (r550+), else NVML's 20 ms snapshot, taken at most every 5 s.",
        WHOLE,
    ),
    _m(
        "gpu_pcie_tx_throughput",
        "bytes_per_second",
        "gauge",
        "gpu",
        "PCIe bytes per second out of the GPU: the interval's mean from NVML's PCIe byte counters where the driver has"
        " them (r550+), else NVML's 20 ms snapshot, taken at most every 5 s.",
        WHOLE,
    ),
    _m(
        "gpu_nvlink_rx_throughput",
        "bytes_per_second",
        "gauge",
        "gpu",
        "NVLink data bytes received per second on one link (label link), over the sample interval.",
        WHOLE,
    ),
    _m(
        "gpu_nvlink_tx_throughput",
        "bytes_per_second",
        "gauge",
        "gpu",
        "NVLink data bytes sent per second on one link (label link), over the sample interval.",
        WHOLE,
    ),
    _m(
        "gpu_sm_activity",
        "ratio",
        "gauge",
        "gpu",
        "Share of SMs busy over the sample interval (NVML GPM, Hopper and later), 0..1.",
        PERMILLE,
    ),
    _m(
        "gpu_tensor_activity",
        "ratio",
        "gauge",
        "gpu",
        "Share of time the SMs ran tensor-core work over the sample interval (NVML GPM), 0..1.",
        PERMILLE,
    ),
    _m(
        "gpu_dram_bandwidth_utilization",
        "ratio",
        "gauge",
        "gpu",
        "GPU memory bandwidth used as a share of its peak over the sample interval (NVML GPM), 0..1.",
        PERMILLE,
    ),
    _m(
        "gpu_xid_events",
        "",
        "counter",
        "gpu",
        "XID critical-error events the driver reported for the GPU since recording began (all codes).",
        WHOLE,
    ),
    _m(
        "gpu_xid_errors",
        "",
        "counter",
        "gpu",
        "XID critical-error events since recording began, per XID code (label xid).",
        WHOLE,
    ),
    # training, from the job
    _m("step", "", "gauge", "training", "Training step of the last logged metrics."),
    _m("epoch", "", "gauge", "training", "Training epoch (fractional) of the last logged metrics."),
    _m("loss", "", "gauge", "training", "Training loss."),
    _m("validation_loss", "", "gauge", "training", "Validation loss."),
    _m("learning_rate", "", "gauge", "training", "Learning rate."),
    _m("grad_norm", "", "gauge", "training", "Gradient norm."),
    _m("step_time", "seconds", "gauge", "training", "Wall time of one training step (per rank in a distributed job)."),
    _m("steps_per_second", "per_second", "gauge", "training", "Training steps per second."),
    _m("samples_per_second", "per_second", "gauge", "training", "Training samples per second."),
    _m("tokens_per_second", "per_second", "gauge", "training", "Training tokens per second."),
    # The HF Trainer's end-of-training summary: one value a run, never a point on the curves above (its
    # train_loss is the run's mean loss, not its last).
    _m("train_loss", "", "gauge", "training", "Mean training loss over the run (the Trainer's final summary)."),
    _m("train_runtime", "seconds", "gauge", "training", "Training time of the run (the Trainer's final summary)."),
    _m("train_samples_per_second", "per_second", "gauge", "training", "Run mean samples per second (summary)."),
    _m("train_steps_per_second", "per_second", "gauge", "training", "Run mean steps per second (summary)."),
    # GPU depth from inside the job and derived per-run figures (issue 17). torch.cuda's allocator, per
    # torch device (label device = "cuda:<torch index>", which is not NVML's gpu index under
    # CUDA_VISIBLE_DEVICES or CUDA's default fastest-first order); written only by a job that uses CUDA.
    Metric(
        "torch_cuda_memory_allocated",
        "bytes",
        "gauge",
        "gpu",
        "GPU memory in live tensors (torch.cuda).",
        WHOLE,
        ("device",),
    ),
    Metric(
        "torch_cuda_memory_reserved",
        "bytes",
        "gauge",
        "gpu",
        "GPU memory torch's caching allocator holds.",
        WHOLE,
        ("device",),
    ),
    Metric(
        "torch_cuda_memory_peak",
        "bytes",
        "gauge",
        "gpu",
        "Peak GPU memory in live tensors since the job started (or reset).",
        WHOLE,
        ("device",),
    ),
    Metric(
        "torch_cuda_alloc_retries",
        "",
        "counter",
        "gpu",
        "Allocations torch retried after freeing its cache: the job is near out of GPU memory.",
        WHOLE,
        ("device",),
    ),
    Metric("torch_cuda_ooms", "", "counter", "gpu", "CUDA out-of-memory errors torch raised.", WHOLE, ("device",)),
    _m("num_input_tokens_seen", "", "gauge", "training", "Tokens trained on so far (the HF Trainer's count)."),
    _m(
        "model_flops_per_token",
        "",
        "gauge",
        "training",
        "Model FLOPs per trained token, as the job states it (for MFU).",
    ),
    _m("run_gpu_energy", "joules", "gauge", "run", "Energy all GPUs used over the run (derived)."),
    _m("energy_per_token", "joules", "gauge", "run", "GPU energy per trained token over the run (derived)."),
    _m("gpu_tokens_per_second", "per_second", "gauge", "run", "Tokens per second per GPU over the run (derived)."),
    _m(
        "mfu",
        "ratio",
        "gauge",
        "run",
        "Model FLOPs utilisation: achieved over the GPUs' peak dense BF16/FP16 (derived).",
    ),
    # inference, from the job or a scraped server
    _m("inference_latency", "milliseconds", "histogram", "inference", "End-to-end request latency."),
    _m("time_to_first_token", "milliseconds", "histogram", "inference", "Time to first token."),
    _m("inter_token_latency", "milliseconds", "histogram", "inference", "Time per output token after the first."),
    _m("batch_throughput", "per_second", "gauge", "inference", "Requests completed per second."),
    _m("token_throughput", "per_second", "gauge", "inference", "Output tokens generated per second."),
    _m(
        "cache_hit_rate",
        "ratio",
        "gauge",
        "inference",
        "Share of prompt tokens found in the prefix cache, 0..1 (vLLM: hits / queries in tokens; SGLang's gauge; llama.cpp: reused / all).",
    ),
    _m("error_rate", "ratio", "gauge", "inference", "Share of requests that failed, 0..1."),
    _m("timeout_rate", "ratio", "gauge", "inference", "Share of requests over the configured timeout, 0..1."),
    _m("batch_queue_size", "", "gauge", "inference", "Requests waiting to be served."),
    _m("requests_running", "", "gauge", "inference", "Requests being served."),
    _m("kv_cache_usage", "ratio", "gauge", "inference", "Share of the KV cache in use, 0..1."),
    _m("preemption_rate", "per_second", "gauge", "inference", "Requests preempted per second (KV cache full)."),
    _m(
        "request_time_per_output_token",
        "milliseconds",
        "histogram",
        "inference",
        "Mean of each finished request's own time per output token (vLLM's per-request TPOT; TGI's mean time "
        "per token, whose inference time includes the prefill).",
    ),
    _m(
        "server_flops_per_gpu",
        "per_second",
        "gauge",
        "inference",
        "Floating-point operations per second per GPU, as the server estimates them (vLLM MFU counters).",
    ),
    _m(
        "server_read_bytes_per_gpu",
        "bytes_per_second",
        "gauge",
        "inference",
        "Memory bytes read per second per GPU, as the server estimates them (vLLM MFU counters).",
    ),
    _m(
        "server_write_bytes_per_gpu",
        "bytes_per_second",
        "gauge",
        "inference",
        "Memory bytes written per second per GPU, as the server estimates them (vLLM MFU counters).",
    ),
    # about the run and llamamon itself
    _m("run_active", "", "gauge", "run", "1 while the run is being recorded, 0 once it ended."),
    _m("last_sample", "timestamp", "gauge", "run", "Unix time of the last sample written."),
    _m("alerts_firing", "", "gauge", "run", "Alerts firing (label severity)."),
    _m("notification_failures", "", "counter", "run", "Notifications a channel failed to deliver (label channel)."),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

# Names jobs and servers commonly use -> catalog names. Extendable from monitoring.yaml (aliases:).
ALIASES: dict[str, str] = {
    "eval_loss": "validation_loss",
    "val_loss": "validation_loss",
    "valid_loss": "validation_loss",
    "validation/loss": "validation_loss",
    "train/loss": "loss",
    "lr": "learning_rate",
    "learning-rate": "learning_rate",
    "gradient_norm": "grad_norm",
    "grad-norm": "grad_norm",
    "it/s": "steps_per_second",
    "iteration_time": "step_time",
    "time_per_step": "step_time",
    "latency": "inference_latency",
    "ttft": "time_to_first_token",
    "queue_size": "batch_queue_size",
}


def quantize(value: float, resolution: float | None) -> float:
    """``value`` on the grid of ``resolution`` (nearest multiple, ties to even); unchanged for None or NaN/inf.

    With a power-of-two resolution the result is exact in float64 and quantize(quantize(x)) == quantize(x).
    """
    if resolution is None or not math.isfinite(value):
        return value
    return round(value / resolution) * resolution


def resolution_of(name: str) -> float | None:
    """The step a built-in collector stores ``name`` with; None (kept exactly) for everything else."""
    metric = BY_NAME.get(name)
    return metric.resolution if metric is not None else None


# A histogram metric scraped from a server is stored whole, as Prometheus keeps it: cumulative counts
# ``<name>_bucket`` (label ``le``, upper bounds as the server wrote them), ``<name>_sum`` and ``<name>_count``,
# in the metric's Prometheus base unit (seconds for latencies) and counted from the run's first scrape.
# Samples of ``<name>`` itself stay what a job logs: one observation each.
HISTOGRAM_PARTS: tuple[str, ...] = ("bucket", "sum", "count")


def histogram_parts(name: str) -> tuple[str, ...]:
    """The stored part series of a catalog histogram metric (``inference_latency_bucket`` ...); () for others."""
    metric = BY_NAME.get(name)
    if metric is None or metric.kind != "histogram":
        return ()
    return tuple(f"{metric.name}_{part}" for part in HISTOGRAM_PARTS)


@functools.lru_cache(maxsize=4096)
def histogram_part(name: str) -> tuple[Metric, str] | None:
    """(the histogram metric, "bucket"/"sum"/"count") for a stored part series name, else None."""
    base, _, part = name.rpartition("_")
    metric = BY_NAME.get(base)
    if part in HISTOGRAM_PARTS and metric is not None and metric.kind == "histogram":
        return metric, part
    return None


def get(name: str) -> Metric | None:
    """The catalog entry for a name (aliases resolved), or None for a job's own metric."""
    return BY_NAME.get(ALIASES.get(name, name))


def canonical(name: str, aliases: dict[str, str] | None = None) -> str:
    """Resolve an alias (config-given ones first) to the name stored; unknown names pass through."""
    if aliases and name in aliases:
        return aliases[name]
    return ALIASES.get(name, name)


def suggest(name: str, known: list[str] | tuple[str, ...] | None = None) -> str | None:
    """Closest known metric name, for "did you mean" messages."""
    return closest(name, known if known is not None else [*BY_NAME, *ALIASES])


# What a validation pass reports besides its loss (the HF Trainer's compute_metrics results come back as
# eval_accuracy, eval_f1, ...): training metrics, shown with the validation loss, not as "other" metrics.
VALIDATION_PREFIXES = ("eval_", "validation_")


def group_of(name: str) -> str:
    """Store group for a metric name: its catalog group; a name the catalog lacks is "training" when it is a
    validation result (``eval_*``, ``validation_*``), else "custom"."""
    metric = get(name)
    if metric is None and (part := histogram_part(name)) is not None:
        metric = part[0]
    if metric is None:
        return "training" if name.startswith(VALIDATION_PREFIXES) else "custom"
    return metric.group if metric.group != "run" else "custom"
