"""NVML GPU Performance Monitoring (GPM, Hopper and later): SM, tensor-pipe and DRAM bandwidth activity.

Why GPM beside ``gpu_utilization``: NVML's utilisation is the share of time *any* kernel ran, so one tiny
kernel keeps it at 100 %; GPM says how much of the SMs, tensor cores and memory bandwidth that work used.
A GPM metric is computed between two samples the driver takes, so each GPU keeps two sample buffers
(allocated once at ``probe()``) and swaps them every tick: the metrics cover the interval since the last
sample. A GPU or driver without GPM is said once per GPU, with the reason, and not asked again.
"""

from __future__ import annotations

from typing import Any

from llamamon.collectors._nvml import DeviceSkipped, Nvml, Unsupported
from llamamon.samples import Sample, make_labels

# nvml.h NVML_GPM_METRIC_* ids (stable ABI), each a percentage 0..100.
GPM_METRICS: tuple[tuple[str, int], ...] = (
    ("gpu_sm_activity", 2),  # NVML_GPM_METRIC_SM_UTIL
    ("gpu_tensor_activity", 5),  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    ("gpu_dram_bandwidth_utilization", 10),  # NVML_GPM_METRIC_DRAM_BW_UTIL
)
GPM_METRICS_GET_VERSION = 1
NVML_SUCCESS = 0


class Gpm:
    """Per GPU: (previous sample, spare sample, the metrics request reused every tick)."""

    def __init__(self, session: Nvml) -> None:
        self._session = session
        self._state: dict[int, list[Any]] = {}
        self._probed: set[int] = set()

    def probe(self, index: int) -> None:
        """Whether GPU ``index`` has GPM; if so, its buffers and first sample. A transient error (DeviceSkipped)
        leaves it unprobed, to be asked again at its next tick."""
        self._probed.add(index)
        try:
            self._probe(index)
        except DeviceSkipped:
            self._free(index)
            self._probed.discard(index)
            raise

    def _probe(self, index: int) -> None:
        try:
            support = self._session.attempt(index, "nvmlGpmQueryDeviceSupport")
        except Unsupported as exc:
            self._session.drop(index, "gpm", f"nvmlGpmQueryDeviceSupport: {exc.reason} (GPM needs driver r520+)")
            return
        if not support.isSupportedDevice:
            self._session.drop(index, "gpm", "this GPU has no NVML GPM (Hopper or later needed)")
            return
        try:
            samples = [self._session.plain("nvmlGpmSampleAlloc") for _ in range(2)]
            request = self._session.module.c_nvmlGpmMetricsGet_t()
        except (Unsupported, AttributeError) as exc:
            self._session.drop(index, "gpm", f"GPM sample buffers: {getattr(exc, 'reason', exc)}")
            return
        request.version = GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        for slot, (_, metric_id) in enumerate(GPM_METRICS):
            request.metrics[slot].metricId = metric_id
        self._state[index] = [*samples, request]
        if not self._sample(index, samples[0]):
            self._free(index)

    def samples(self, index: int) -> list[Sample]:
        if index not in self._probed:
            self.probe(index)
            return []  # that took the first sample: this tick is the baseline of the next
        state = self._state.get(index)
        if state is None:
            return []
        previous, current, request = state
        if not self._sample(index, current):
            self._free(index)
            return []
        state[0], state[1] = current, previous  # the next interval starts where this one ended
        request.sample1, request.sample2 = previous, current
        try:
            self._session.plain("nvmlGpmMetricsGet", request)
        except Exception as exc:
            if not self._session.is_error(exc) and not isinstance(exc, Unsupported):
                raise
            self._session.transient(index, "nvmlGpmMetricsGet", exc, skipped="its GPM metrics")
            return []
        labels = make_labels(gpu=index)
        out: list[Sample] = []
        for slot, (metric, _) in enumerate(GPM_METRICS):
            result = request.metrics[slot]
            if result.nvmlReturn == NVML_SUCCESS:
                out.append(Sample(metric, float(result.value) / 100.0, labels))
        return out

    def _sample(self, index: int, buffer: Any) -> bool:
        """Take a GPM sample into ``buffer``; False once GPM turns out unusable on this GPU. DeviceSkipped
        (transient) goes up: the whole GPU sits this tick out, its previous sample stays the baseline."""
        try:
            self._session.attempt(index, "nvmlGpmSampleGet", buffer)
        except Unsupported as exc:
            self._session.drop(index, "gpm", f"nvmlGpmSampleGet: {exc.reason}")
            return False
        return True

    def _free(self, index: int) -> None:
        state = self._state.pop(index, None)
        for buffer in (state or [])[:2]:
            try:
                self._session.plain("nvmlGpmSampleFree", buffer)
            except Exception as exc:
                if not self._session.is_error(exc) and not isinstance(exc, Unsupported):
                    raise

    def close(self) -> None:
        """Free every GPU's buffers (before nvmlShutdown)."""
        for index in list(self._state):
            self._free(index)
        self._probed.clear()
