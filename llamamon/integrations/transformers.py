"""Hugging Face Transformers: ``trainer.add_callback(LlamamonCallback())`` records what the Trainer logs.

The Trainer calls ``on_log`` with the same dict it prints (``loss``, ``grad_norm``, ``learning_rate``,
``epoch``; ``eval_loss`` … after evaluation); this callback hands it to :func:`llamamon.log` with the
Trainer's global step, so the names go through the same alias table (``eval_loss`` -> ``validation_loss``).
Use it instead of stdout parsing when the Trainer's printing is turned off or rounded.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llamamon import api

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

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        api.flush()
