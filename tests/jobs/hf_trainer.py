"""A real Hugging Face ``Trainer`` on a tiny Llama built from a config (no hub, no tokenizer, CPU).

``python hf_trainer.py HISTORY.json [--callback] [--every-10]``: 6 steps on synthetic token ids, logging every
step and evaluating every 3 (with ``--every-10``: 25 steps, logging and evaluating every 10, as users set it), then ``trainer.state.log_history`` (what the Trainer itself logged, with its steps) is
written to HISTORY.json. With ``--callback`` the ``LlamamonCallback`` is added; without it the job has no
llamamon code at all and ``llamamon record`` reads what the Trainer prints.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments


class TokenIds(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(0, 64, (n, 8), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(history: str, callback: bool, every_10: bool) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    args = TrainingArguments(
        output_dir="hf-out",
        max_steps=25 if every_10 else 6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        logging_steps=10 if every_10 else 1,
        eval_strategy="steps",
        eval_steps=10 if every_10 else 3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=LlamaForCausalLM(config), args=args, train_dataset=TokenIds(32, 1), eval_dataset=TokenIds(8, 2)
    )
    if callback:
        from llamamon.integrations.transformers import LlamamonCallback

        trainer.add_callback(LlamamonCallback())
    trainer.train()
    with open(history, "w", encoding="utf-8") as fh:
        json.dump(trainer.state.log_history, fh)


if __name__ == "__main__":
    main(sys.argv[1], "--callback" in sys.argv[2:], "--every-10" in sys.argv[2:])
