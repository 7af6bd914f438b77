"""torch.cuda allocator figures from inside the job: read through a stand-in for torch.cuda where CUDA is
needed, and with the real (CPU) torch and none at all for what must not happen."""

from __future__ import annotations

import json
import sys

import pytest

from llamamon.monitors import cuda_memory
from llamamon.samples import make_labels
from tests.fakes.torch_cuda import FakeCuda, FakeDevice, fake_torch
from tests.test_api_log import all_rows, run_script

GIB = 1 << 30
TORCH_NAMES = {m for m, _ in cuda_memory.GAUGES} | {m for m, _ in cuda_memory.COUNTERS}


def _two_devices() -> FakeCuda:
    return FakeCuda(
        [
            FakeDevice(3 * GIB, 4 * GIB, 5 * GIB, {"num_alloc_retries": 7, "num_ooms": 1}),
            FakeDevice(GIB, 2 * GIB, GIB, {"num_alloc_retries": 0}),  # a torch without num_ooms
            FakeDevice(0, 0, 0, {"num_alloc_retries": 0, "num_ooms": 0}),  # another rank's GPU: never used here
        ]
    )


def test_rows_per_device_the_job_used_with_exact_figures():
    rows = cuda_memory.cuda_memory_rows(_two_devices(), now=100.0, step=12)
    got = {(r.metric, dict(r.labels)["device"]): r.value for r in rows}
    assert got == {
        ("torch_cuda_memory_allocated", "cuda:0"): 3 * GIB,
        ("torch_cuda_memory_reserved", "cuda:0"): 4 * GIB,
        ("torch_cuda_memory_peak", "cuda:0"): 5 * GIB,
        ("torch_cuda_alloc_retries", "cuda:0"): 7,
        ("torch_cuda_ooms", "cuda:0"): 1,
        ("torch_cuda_memory_allocated", "cuda:1"): GIB,
        ("torch_cuda_memory_reserved", "cuda:1"): 2 * GIB,
        ("torch_cuda_memory_peak", "cuda:1"): GIB,
        ("torch_cuda_alloc_retries", "cuda:1"): 0,
    }
    assert {(r.time, r.group, r.step) for r in rows} == {(100.0, "gpu", 12)}


@pytest.mark.parametrize(
    ("available", "initialized", "expected"),
    [(True, True, True), (True, False, False), (False, False, False)],
)
def test_read_only_once_the_job_has_initialised_cuda(monkeypatch, available, initialized, expected):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert cuda_memory.job_cuda() is None  # no torch imported by the job
    fake = FakeCuda([FakeDevice(GIB, GIB, GIB)], available=available, initialized=initialized)
    monkeypatch.setitem(sys.modules, "torch", fake_torch(fake))
    assert (cuda_memory.job_cuda() is fake) is expected
    assert bool(cuda_memory.job_cuda_memory_rows(now=1.0)) is expected


def test_a_failing_torch_cuda_records_nothing_and_raises_nothing(monkeypatch):
    class Broken(FakeCuda):
        def memory_stats(self, device):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(sys.modules, "torch", fake_torch(Broken([FakeDevice()])))
    assert cuda_memory.job_cuda_memory_rows(now=1.0) == []


def test_training_monitor_and_log_helper_store_the_job_figures(tmp_path):
    run_script(
        """
        import time
        from tests.fakes.torch_cuda import FakeCuda, FakeDevice, install
        from llamamon import TrainingMonitor
        from llamamon.monitors import log_cuda_memory

        install(FakeCuda([FakeDevice(1000, 2048, 4096, {"num_alloc_retries": 2, "num_ooms": 0})]))
        with TrainingMonitor(interval=0.05, flops_per_token=4.2e10) as monitor:
            monitor.log(loss=1.0, step=1)
            time.sleep(0.2)
        assert log_cuda_memory(step=5)
        """,
        tmp_path,
    )
    every = all_rows(tmp_path / ".metrics")
    assert [r.value for r in every if r.metric == "model_flops_per_token"] == [4.2e10]  # once, for the report's MFU
    rows = [r for r in every if r.metric in TORCH_NAMES]
    assert {r.labels for r in rows} == {make_labels(device="cuda:0")}
    assert {(r.metric, r.value) for r in rows} == {
        ("torch_cuda_memory_allocated", 1000),
        ("torch_cuda_memory_reserved", 2048),
        ("torch_cuda_memory_peak", 4096),
        ("torch_cuda_alloc_retries", 2),
        ("torch_cuda_ooms", 0),
    }
    assert sum(r.metric == "torch_cuda_memory_reserved" for r in rows) >= 3  # ticks, the last one, the helper
    assert [r.step for r in rows if r.step is not None] == [5] * 5


def test_real_cpu_torch_logs_nothing_and_breaks_nothing(tmp_path):
    pytest.importorskip("torch")
    result = run_script(
        """
        import json, time, torch
        from llamamon import TrainingMonitor
        from llamamon.monitors import log_cuda_memory

        with TrainingMonitor(interval=0.05) as monitor:
            x = torch.ones(64, 64)
            monitor.log(loss=float((x @ x).mean()), step=1)
            time.sleep(0.2)
        print(json.dumps({"logged": log_cuda_memory(), "cuda": torch.cuda.is_available()}))
        """,
        tmp_path,
    )
    assert json.loads(result.stdout) == {"logged": False, "cuda": False}
    rows = all_rows(tmp_path / ".metrics")
    assert any(r.metric == "loss" for r in rows)  # it did record
    assert not [r for r in rows if r.metric in TORCH_NAMES]


def test_llamamon_never_imports_torch_for_a_job_that_does_not(tmp_path):
    pytest.importorskip("torch")  # installed, so an import by llamamon would succeed and show
    result = run_script(
        """
        import sys, time
        from llamamon import TrainingMonitor
        from llamamon.monitors import log_cuda_memory
        import llamamon.integrations  # the package, not the transformers callback (which imports transformers)

        with TrainingMonitor(interval=0.05) as monitor:
            monitor.log(loss=1.0, step=1)
            time.sleep(0.2)
        log_cuda_memory()
        print("torch" in sys.modules)
        """,
        tmp_path,
    )
    assert result.stdout.strip() == "False"
