"""The Trainer callback, driven by the real transformers CallbackHandler (no torch needed for this path)."""

from __future__ import annotations

import math

import pytest

from tests.test_api_log import all_rows, run_script

pytest.importorskip("transformers", reason="transformers is in the test extra (installs without torch)")


@pytest.mark.slow
def test_on_log_records_what_the_trainer_logs(tmp_path):
    run_script(
        f"""
        from transformers import TrainingArguments
        from transformers.trainer_callback import (
            CallbackHandler, DefaultFlowCallback, PrinterCallback, TrainerControl, TrainerState,
        )
        from llamamon.integrations.transformers import LlamamonCallback

        args = TrainingArguments(output_dir={str(tmp_path / "out")!r}, report_to=[])
        state = TrainerState()
        handler = CallbackHandler([DefaultFlowCallback, PrinterCallback, LlamamonCallback()], None, None, None, None)
        control = TrainerControl()
        for step, loss in ((10, 0.9), (20, 0.7), (30, float("nan"))):
            state.global_step = step
            handler.on_log(args, state, control, {{"loss": loss, "grad_norm": 1.5, "learning_rate": 5e-5, "epoch": step / 100}})
        state.global_step = 30
        handler.on_log(args, state, control, {{"eval_loss": "0.65", "eval_runtime": 1.25, "epoch": 0.3, "total_flos": 1e12}})
        state.is_world_process_zero = False
        handler.on_log(args, state, control, {{"loss": 123.0}})  # another rank: not recorded by default
        handler.on_train_end(args, state, control)
        """,
        tmp_path,
    )
    rows = [r for r in all_rows(tmp_path / ".metrics") if r.metric != "step"]
    got = {(r.metric, r.step): r.value for r in rows}
    assert got[("loss", 10)] == 0.9
    assert got[("loss", 20)] == 0.7
    assert math.isnan(got[("loss", 30)])
    assert got[("learning_rate", 20)] == 5e-5
    assert got[("grad_norm", 10)] == 1.5
    assert got[("validation_loss", 30)] == 0.65  # eval_loss alias, numeric string accepted
    assert got[("eval_runtime", 30)] == 1.25
    assert not any(r.metric == "total_flos" for r in rows)
    assert 123.0 not in [r.value for r in rows]


@pytest.mark.slow
def test_on_log_records_torch_cuda_allocator_figures_when_the_trainer_runs_on_cuda(tmp_path):
    run_script(
        f"""
        from transformers import TrainingArguments
        from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState
        from llamamon.integrations.transformers import LlamamonCallback
        from tests.fakes.torch_cuda import FakeCuda, FakeDevice, install

        args = TrainingArguments(output_dir={str(tmp_path / "out")!r}, report_to=[])
        state, control = TrainerState(), TrainerControl()
        handler = CallbackHandler([LlamamonCallback()], None, None, None, None)
        install(FakeCuda([FakeDevice(100, 200, 300, {{"num_alloc_retries": 4, "num_ooms": 0}})]))
        state.global_step = 10
        handler.on_log(args, state, control, {{"loss": 0.9}})
        handler.on_train_end(args, state, control)
        """,
        tmp_path,
    )
    got = {(r.metric, r.step, r.value) for r in all_rows(tmp_path / ".metrics") if r.metric.startswith("torch_cuda")}
    assert got == {
        ("torch_cuda_memory_allocated", 10, 100),
        ("torch_cuda_memory_reserved", 10, 200),
        ("torch_cuda_memory_peak", 10, 300),
        ("torch_cuda_alloc_retries", 10, 4),
        ("torch_cuda_ooms", 10, 0),
    }
