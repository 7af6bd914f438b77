"""A GPU's interconnects: PCIe link state and throughput, NVLink throughput per link (GpuCollector's part).

Why current *and* maximum PCIe generation and width: a GPU that trained at Gen4 x16 and now runs at x4 (a
reseated riser, a failing slot) is a silent slowdown that only shows as the two disagreeing. Many boards
also drop the generation at idle to save power, so the generation is only telling under load; the width
should not move.

PCIe throughput comes, where the driver has them, from NVML's PCIe byte counters
(``nvmlDeviceGetFieldValues`` NVML_FI_DEV_PCIE_COUNT_TX_BYTES/RX_BYTES, r550+): one quick call per GPU,
and a rate that is the mean over the sample interval. Elsewhere it is ``nvmlDeviceGetPcieThroughput``,
which counts bytes over 20 ms *when asked*: each of its two calls per GPU blocks ~20 ms inside NVML, so
8 GPUs at every 0.5 s tick would keep the collector's worker busy 0.3 s of each 0.5 s. That 20 ms
snapshot is a spot sample, not the interval's mean, however often it is taken, so it is read at most
every PCIE_SNAPSHOT_EVERY_S per GPU (the ticks between have no PCIe throughput row). NVLink throughput
comes from NVML's per-link data counters (``nvmlDeviceGetFieldValues``, KiB), turned into bytes per
second over the sample interval the way the system collector turns its counters into rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llamamon.collectors._nvml import Nvml, Unsupported
from llamamon.samples import Sample, make_labels

# nvml.h values (stable ABI; older pynvml releases lack some names).
PCIE_UTIL_TX_BYTES = 0
PCIE_UTIL_RX_BYTES = 1
FI_NVLINK_THROUGHPUT_DATA_TX = 138  # KiB, scopeId = link
FI_NVLINK_THROUGHPUT_DATA_RX = 139
FI_PCIE_COUNT_TX_BYTES = 197  # bytes since the driver loaded (may wrap), r550+
FI_PCIE_COUNT_RX_BYTES = 198
PCIE_SNAPSHOT_EVERY_S = 5.0  # 8 GPUs x 2 x 20 ms = 0.32 s of NVML's time per read: at most ~6 % of the worker's
NVLINK_MAX_LINKS = 36  # NVML_NVLINK_MAX_LINKS of r550+; a device answers InvalidArgument past its own count
NVML_SUCCESS = 0
KIB = 1024  # NVML's "KB" of PCIe throughput and "KiB" of NVLink counters: 1024 bytes (as nvtop reads them)

PCIE_LINK: tuple[tuple[str, str, str], ...] = (
    ("gpu_pcie_link_gen", "pcie_link_gen", "nvmlDeviceGetCurrPcieLinkGeneration"),
    ("gpu_pcie_link_gen_max", "pcie_link_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration"),
    ("gpu_pcie_link_width", "pcie_link_width", "nvmlDeviceGetCurrPcieLinkWidth"),
    ("gpu_pcie_link_width_max", "pcie_link_width_max", "nvmlDeviceGetMaxPcieLinkWidth"),
)
PCIE_THROUGHPUT: tuple[tuple[str, str, int, int], ...] = (
    ("gpu_pcie_tx_throughput", "pcie_tx", PCIE_UTIL_TX_BYTES, FI_PCIE_COUNT_TX_BYTES),
    ("gpu_pcie_rx_throughput", "pcie_rx", PCIE_UTIL_RX_BYTES, FI_PCIE_COUNT_RX_BYTES),
)
Reading = tuple[float, dict[int, int]]  # (when, {field id: bytes})
NVLINK_FIELDS: tuple[tuple[str, int], ...] = (
    ("gpu_nvlink_tx_throughput", FI_NVLINK_THROUGHPUT_DATA_TX),
    ("gpu_nvlink_rx_throughput", FI_NVLINK_THROUGHPUT_DATA_RX),
)
_NVLINK_METRIC: dict[int, str] = {field_id: metric for metric, field_id in NVLINK_FIELDS}
_PCIE_COUNTER_IDS: list[int] = [counter for *_, counter in PCIE_THROUGHPUT]


class Links:
    """PCIe and NVLink samples per GPU; ``probe()`` finds a GPU's active NVLinks and reads their baseline."""

    def __init__(self, session: Nvml, clock: Callable[[], float]) -> None:
        self._session = session
        self._clock = clock
        self._nvlinks: dict[int, list[int]] = {}  # GPU -> its active links ([] for none)
        self._nvlink_ids: dict[int, list[tuple[int, int]]] = {}  # GPU -> (field id, link) asked every tick
        self._last: dict[int, tuple[float, dict[tuple[int, int], int]]] = {}  # GPU -> (time, {(link, id): KiB})
        self._pcie_last: dict[int, Reading | None] = {}  # GPU -> its last PCIe counters; None: snapshots
        self._snapshot_at: dict[int, float] = {}  # GPU -> when its PCIe throughput was last snapshot

    def probe(self, index: int) -> None:
        """Which NVLinks are up on GPU ``index``; a PCIe card's NotSupported is said once, as "nvlink"."""
        links: list[int] = []
        for link in range(NVLINK_MAX_LINKS):
            try:
                active = self._session.attempt(index, "nvmlDeviceGetNvLinkState", link)
            except Unsupported as exc:
                if link == 0:
                    self._session.drop(index, "nvlink", f"nvmlDeviceGetNvLinkState: {exc.reason} (no NVLink)")
                break  # past the device's last link: InvalidArgument
            if active:
                links.append(link)
        if not links and not self._session.dropped(index, "nvlink"):
            self._session.drop(index, "nvlink", "no NVLink is active on this GPU")
        self._nvlinks[index] = links
        self._nvlink_ids[index] = [(field_id, link) for link in links for _, field_id in NVLINK_FIELDS]
        if links and (reading := self._read(index)) is not None:
            self._last[index] = reading  # the baseline: the first sample already has a rate
        self._pcie_last[index] = self._read_pcie(index)

    def samples(self, index: int) -> list[Sample]:
        labels = make_labels(gpu=index)
        out: list[Sample] = []
        for metric, field, function in PCIE_LINK:
            value = self._session.call(index, field, function)
            if value is not None:
                out.append(Sample(metric, float(value), labels))
        if index not in self._nvlinks:
            self.probe(index)  # open() could not (the GPU was skipped then): this tick reads the baseline
        else:
            out.extend(self._pcie_rates(index))
            if self._nvlinks[index]:
                out.extend(self._nvlink_rates(index))
        return out

    def _read_pcie(self, index: int) -> Reading | None:
        """The PCIe byte counters, or None where the driver lacks them (older than r550, or this board)."""
        try:
            values = self._session.attempt(index, "nvmlDeviceGetFieldValues", _PCIE_COUNTER_IDS)
        except Unsupported:
            return None
        at = self._clock()
        counters = {int(v.fieldId): int(v.value.ullVal) for v in values if v.nvmlReturn == NVML_SUCCESS}
        return (at, counters) if len(counters) == len(_PCIE_COUNTER_IDS) else None

    def _pcie_rates(self, index: int) -> list[Sample]:
        """Bytes per second since the last tick from the counters; else a throttled 20 ms snapshot."""
        previous = self._pcie_last.get(index)
        if previous is None:
            return self._pcie_snapshot(index)
        reading = self._read_pcie(index)
        self._pcie_last[index] = reading
        if reading is None:
            return self._pcie_snapshot(index)  # the counters stopped answering: snapshots from now on
        elapsed = reading[0] - previous[0]
        out = []
        for metric, _field, _util, counter in PCIE_THROUGHPUT:
            before, now = previous[1][counter], reading[1][counter]
            if elapsed > 0 and now >= before:  # smaller: wrapped or reset, no rate this tick
                out.append(Sample(metric, (now - before) / elapsed, make_labels(gpu=index)))
        return out

    def _pcie_snapshot(self, index: int) -> list[Sample]:
        now = self._clock()
        last = self._snapshot_at.get(index)
        if last is not None and now - last < PCIE_SNAPSHOT_EVERY_S:
            return []
        self._snapshot_at[index] = now
        out = []
        for metric, field, util, _counter in PCIE_THROUGHPUT:
            kilobytes = self._session.call(index, field, "nvmlDeviceGetPcieThroughput", util)
            if kilobytes is not None:
                out.append(Sample(metric, float(kilobytes) * KIB, make_labels(gpu=index)))
        return out

    def _read(self, index: int) -> tuple[float, dict[tuple[int, int], int]] | None:
        """(when, every active link's data counters in KiB), or None once the query is unsupported."""
        values = self._session.call(index, "nvlink_throughput", "nvmlDeviceGetFieldValues", self._nvlink_ids[index])
        if values is None:
            return None
        at = self._clock()
        counters: dict[tuple[int, int], int] = {}
        failed: set[int] = set()
        for value in values:
            if value.nvmlReturn == NVML_SUCCESS:
                counters[(int(value.scopeId), int(value.fieldId))] = int(value.value.ullVal)
            else:
                failed.add(int(value.nvmlReturn))
        if not counters:
            why = ", ".join(self._error_text(code) for code in sorted(failed)) or "no values"
            self._session.drop(index, "nvlink_throughput", f"nvmlDeviceGetFieldValues(NVLINK_THROUGHPUT_DATA): {why}")
            return None
        return at, counters

    def _nvlink_rates(self, index: int) -> list[Sample]:
        reading = self._read(index)
        if reading is None:
            return []
        previous = self._last.get(index)
        self._last[index] = reading
        if previous is None:
            return []
        at, counters = reading
        elapsed = at - previous[0]
        if elapsed <= 0:
            return []
        out: list[Sample] = []
        for (link, field_id), now in counters.items():
            before = previous[1].get((link, field_id))
            # A smaller value is a counter reset (the driver reloaded): no rate this tick rather than a wrong one.
            if before is None or now < before:
                continue
            out.append(
                Sample(_NVLINK_METRIC[field_id], (now - before) * KIB / elapsed, make_labels(gpu=index, link=link))
            )
        return out

    def _error_text(self, code: int) -> str:
        error_class: Any = getattr(self._session.module, "NVMLError", None)
        try:
            return str(error_class(code)) if error_class is not None else f"NVML error {code}"
        except Exception:  # noqa: BLE001 - a message for a log line must never fail the tick
            return f"NVML error {code}"
