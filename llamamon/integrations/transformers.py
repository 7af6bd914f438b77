"""Hugging Face Transformers: ``trainer.add_callback(LlamamonCallback())`` records what the Trainer logs.

The Trainer calls ``on_log`` with the same dict it prints (``loss``, ``grad_norm``, ``learning_rate``,
``epoch``; ``eval_loss`` … after evaluation); this callback hands it to :func:`llamamon.log` with the
Trainer's global step, so the names go through the same alias table (``eval_loss`` -> ``validation_loss``).
Under ``llamamon record`` it tells the recorder, before the Trainer prints anything, that the job reports
through llamamon (:func:`llamamon.api.claim_output`): the dicts the Trainer prints are then not parsed as well,
so each value is stored once, exact and with its step. With each log it records torch.cuda's allocator
figures (allocated, reserved, peak, allocation retries) when the Trainer runs on CUDA.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llamamon import api
from llamamon.monitors.cuda_memory import log_cuda_memory

__all__ = ["LlamamonCallback"]

_SKIP = frozenset({"total_flos"})  # the Trainer's own printers drop it too: a FLOP count, not a metric


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # numbers, numpy scalars, and the "0.5123" strings some versions log
    except (TypeError, ValueError):
        return None


class LlamamonCallback(TrainerCallback):
    """Records every ``on_log`` dict; by default only on the main process (``all_ranks=True`` for every rank,
    each labelled with its ``rank``)."""

    def __init__(self, all_ranks: bool = False) -> None:
        self.all_ranks = all_ranks

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        api.claim_output()  # a callback given to Trainer(callbacks=...)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        api.claim_output()  # one added with trainer.add_callback() after the Trainer was built

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or not (self.all_ranks or state.is_world_process_zero):
            return
        values = {}
        for key, raw in logs.items():
            if key in _SKIP:
                continue
            number = _number(raw)
            if number is not None:
                values[key] = number
        if values:
            api.log(values, step=state.global_step)
        log_cuda_memory(step=state.global_step)  # records nothing unless the Trainer runs on CUDA

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        api.flush()
