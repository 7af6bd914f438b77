"""A run's GPU figures that no single sample holds: energy (Wh), J/token, tokens/s per GPU and MFU.

Pure arithmetic on a few numbers per run (the store queries that gather them are the report's), so each
figure is checked against hand-computed values. A figure whose inputs are missing is None, never a guess:
no MFU without the job's FLOPs per token and a known peak, no J/token without a token count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llamamon.gpu_peaks import Peak, peak_for

JOULES_PER_WH = 3600.0


@dataclass(frozen=True, slots=True)
class RunInputs:
    """What the store holds for one run. Keys of the mappings are the GPUs' ``gpu`` labels."""

    energy_counter_j: Mapping[str, float]  # gpu_energy's rise over the run (a counter: max - min)
    power_wh: Mapping[str, float]  # ∫ gpu_power dt, for GPUs without the energy counter (pre-Volta)
    gpus: int  # GPUs the run used
    gpu_names: Sequence[str]  # as NVML names them, for the peak
    tokens: float | None = None  # tokens trained on over the run
    tokens_per_second: float | None = None  # the whole job's rate
    flops_per_token: float | None = None  # model FLOPs per token, as the job states it


@dataclass(frozen=True, slots=True)
class GpuFigures:
    energy_wh: float | None
    energy_source: str  # "energy counter", "integrated power", "energy counter and integrated power" or ""
    joules_per_token: float | None
    tokens_per_second_per_gpu: float | None
    mfu: float | None
    peak: Peak | None


def run_energy_wh(counter_j: Mapping[str, float], power_wh: Mapping[str, float]) -> tuple[float | None, str]:
    """Sum over GPUs: the energy counter where the GPU has one (exact), else its integrated power."""
    used: set[str] = set()
    total = 0.0
    for gpu in sorted({*counter_j, *power_wh}):
        if gpu in counter_j and counter_j[gpu] >= 0:
            total += counter_j[gpu] / JOULES_PER_WH
            used.add("energy counter")
        elif gpu in power_wh:
            total += power_wh[gpu]
            used.add("integrated power")
    if not used:
        return None, ""
    return total, " and ".join(sorted(used))


def common_peak(gpu_names: Sequence[str]) -> Peak | None:
    """The peak all the run's GPUs share; None for unknown or mixed GPUs (no single denominator)."""
    peaks = {peak_for(name) for name in gpu_names}
    if len(peaks) != 1:
        return None
    return peaks.pop()


def mfu(tokens_per_second_per_gpu: float, flops_per_token: float, peak: Peak) -> float:
    """Achieved model FLOP/s of one GPU over its peak dense tensor FLOP/s."""
    return tokens_per_second_per_gpu * flops_per_token / (peak.tflops * 1e12)


def derive(run: RunInputs) -> GpuFigures:
    energy_wh, source = run_energy_wh(run.energy_counter_j, run.power_wh)
    per_token = None
    if energy_wh is not None and run.tokens:
        per_token = energy_wh * JOULES_PER_WH / run.tokens
    per_gpu = run.tokens_per_second / run.gpus if run.tokens_per_second is not None and run.gpus > 0 else None
    peak = common_peak(run.gpu_names)
    utilisation = None
    if per_gpu is not None and run.flops_per_token and peak is not None:
        utilisation = mfu(per_gpu, run.flops_per_token, peak)
    return GpuFigures(energy_wh, source, per_token, per_gpu, utilisation, peak)
