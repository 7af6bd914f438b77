"""A plain PyTorch training loop (CPU, a tiny MLP built in code) that reports through ``TrainingMonitor``.

``python torch_loop.py OUT.json``: 20 SGD steps on synthetic regression data; every 5 steps a validation
loss (as ``val_loss``, an alias) through the monitor and the epoch through ``llamamon.log``; grad_norm is
passed as the 0-dim tensor ``clip_grad_norm_`` returns. OUT.json gets every value handed to llamamon and the
monitor's summary, so a test compares the store with what the job logged, not with its own expectations.
"""

from __future__ import annotations

import asyncio
import json
import sys

import torch
from torch import nn

import llamamon
from llamamon import TrainingMonitor

STEPS = 20
EVAL_EVERY = 5


async def train() -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, xv = torch.randn(64, 8), torch.randn(32, 8)
    w = torch.randn(8, 1)
    y, yv = x @ w + 0.1 * torch.randn(64, 1), xv @ w
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    logged = []
    async with TrainingMonitor(interval=0.2) as monitor:
        for step in range(1, STEPS + 1):
            batch = torch.randint(0, 64, (16,))
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)
            lr = opt.param_groups[0]["lr"]  # the rate this step used
            opt.step()
            sched.step()
            monitor.log({"loss": loss.item(), "learning_rate": lr, "grad_norm": grad_norm}, step=step)
            logged.append({"step": step, "loss": loss.item(), "learning_rate": lr, "grad_norm": grad_norm.item()})
            if step % EVAL_EVERY == 0:
                with torch.no_grad():
                    val = nn.functional.mse_loss(model(xv), yv).item()
                monitor.log(val_loss=val, step=step)
                llamamon.log({"epoch": step / STEPS}, step=step)
                logged.append({"step": step, "val_loss": val})
                logged.append({"step": step, "epoch": step / STEPS})
            await asyncio.sleep(0)
        summary = await monitor.get_training_metrics()
    return {"logged": logged, "summary": summary}


if __name__ == "__main__":
    result = asyncio.run(train())
    with open(sys.argv[1], "w", encoding="utf-8") as fh:
        json.dump(result, fh)
