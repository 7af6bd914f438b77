"""Prints the log lines the Hugging Face Trainer prints, from a real (tiny) numpy training run.

No llamamon import here: this is the "zero code" case. ``llamamon record`` recognises the dict lines
in the job's output (and ignores the progress bar redraws around them)::

    llamamon record -- python examples/hf_trainer_log.py
    llamamon record -- python examples/hf_trainer_log.py --string-numbers   # newer Trainer format

Logistic regression on generated data, logging every 10 steps and evaluating every 50, like a Trainer
with ``logging_steps=10, eval_steps=50``. Takes about 3 s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np


def fmt(logs: dict[str, float], as_strings: bool) -> str:
    # Trainer.log adds epoch; PrinterCallback prints str(dict); some versions format values with :.4g.
    return str({k: f"{v:.4g}" for k, v in logs.items()}) if as_strings else str(logs)


def bar(step: int, total: int, started: float) -> str:
    done = int(30 * step / total)
    rate = step / max(time.perf_counter() - started, 1e-9)
    return f"\r{100 * step // total:3d}%|{'█' * done}{' ' * (30 - done)}| {step}/{total} [{rate:.2f}it/s]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--string-numbers", action="store_true", help="values as quoted strings")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    w_true = rng.normal(size=20)
    x = rng.normal(size=(5000, 20))
    y = (x @ w_true + rng.normal(scale=0.5, size=5000) > 0).astype(float)
    x_val, y_val = x[4000:], y[4000:]
    x, y = x[:4000], y[:4000]
    w = np.zeros(20)
    peak_lr, warmup = 0.5, 30
    epoch_steps = len(x) // 32
    started = time.perf_counter()
    losses: list[float] = []
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(x), 32)
        p = 1 / (1 + np.exp(-(x[idx] @ w)))
        loss = float(-np.mean(y[idx] * np.log(p + 1e-9) + (1 - y[idx]) * np.log(1 - p + 1e-9)))
        grad = x[idx].T @ (p - y[idx]) / len(idx)
        lr = peak_lr * min(step / warmup, 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        w -= lr * grad
        losses.append(loss)
        sys.stderr.write(bar(step, args.steps, started))
        sys.stderr.flush()
        time.sleep(0.005)  # a real step takes a while; lets the bar redraw like tqdm's
        if step % 10 == 0:
            logs = {
                "loss": round(sum(losses) / len(losses), 4),
                "grad_norm": float(np.linalg.norm(grad)),
                "learning_rate": lr,
                "epoch": round(step / epoch_steps, 2),
            }
            losses.clear()
            print(fmt(logs, args.string_numbers), flush=True)
        if step % 50 == 0:
            t0 = time.perf_counter()
            pv = 1 / (1 + np.exp(-(x_val @ w)))
            eval_loss = float(-np.mean(y_val * np.log(pv + 1e-9) + (1 - y_val) * np.log(1 - pv + 1e-9)))
            runtime = time.perf_counter() - t0
            logs = {
                "eval_loss": eval_loss,
                "eval_accuracy": float(((pv > 0.5) == y_val).mean()),
                "eval_runtime": round(runtime, 4),
                "eval_samples_per_second": round(len(x_val) / max(runtime, 1e-9), 3),
                "eval_steps_per_second": round(1 / max(runtime, 1e-9), 3),
                "epoch": round(step / epoch_steps, 2),
            }
            print(fmt(logs, args.string_numbers), flush=True)
    runtime = time.perf_counter() - started
    sys.stderr.write("\n")
    print(
        fmt(
            {
                "train_runtime": round(runtime, 4),
                "train_samples_per_second": round(args.steps * 32 / runtime, 3),
                "train_steps_per_second": round(args.steps / runtime, 3),
                "train_loss": loss,
                "epoch": round(args.steps / epoch_steps, 2),
            },
            args.string_numbers,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
