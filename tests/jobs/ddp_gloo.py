"""DistributedDataParallel on CPU with the gloo backend, meant for ``torchrun --nproc_per_node=2``.

``torchrun --standalone --nproc_per_node=2 ddp_gloo.py OUT_DIR``: each rank trains the same tiny model
on its own data (gradients all-reduced), logs its loss and its own rank with ``llamamon.log``, prints its loss as a JSON line and writes
what it logged to OUT_DIR/rank<N>.json. Both ranks then wait for each other and stay alive a moment,
so the recorder samples a process tree that holds both workers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import llamamon
import llamamon.api

STEPS = 8


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    x = torch.randn(32, 4, generator=gen)
    y = x.sum(dim=1, keepdim=True) + rank
    logged = []
    for step in range(1, STEPS + 1):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # all-reduce over gloo
        opt.step()
        llamamon.log({"loss": loss.item(), "worker_rank": float(rank)}, step=step)
        logged.append({"step": step, "loss": loss.item(), "worker_rank": float(rank)})
        # One write per line: two workers share the pipe, and print()'s separate "\n" would interleave.
        sys.stdout.write(json.dumps({"step": step, "printed_loss": loss.item()}) + "\n")
        sys.stdout.flush()
    llamamon.api.flush()
    (out / f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "local_rank": os.environ["LOCAL_RANK"], "pid": os.getpid(), "logged": logged})
    )
    dist.barrier()
    time.sleep(1.0)  # both workers alive for several of the recorder's 0.2 s samples
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
