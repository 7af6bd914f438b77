"""A real (small) training loop in numpy that reports its metrics with ``llamamon.log``.

A two-hidden-layer MLP learns to classify points of three interleaved spirals lifted into 32 noisy
dimensions. Warm-up then cosine learning-rate schedule, SGD with momentum, validation every 250
steps. About 10 s of CPU (15 s on a shared 2-core machine):

    python examples/train.py                      # starts its own run in ./.metrics
    llamamon record -- python examples/train.py   # joins the recorder's run, with system metrics
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time

# Why: these matrices are small; OpenBLAS threads only fight over the cores (16x slower on a busy 2-core box).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402 - after the thread settings, which numpy reads at import

import llamamon  # noqa: E402


def make_data(n: int, rng: np.random.Generator, dims: int = 32) -> tuple[np.ndarray, np.ndarray]:
    classes = 3
    y = rng.integers(0, classes, n)
    t = rng.uniform(0.0, 1.0, n)
    angle = t * 3.5 * math.pi + y * (2 * math.pi / classes)
    plane = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) + rng.normal(0, 0.04, (n, 2))
    lift = np.random.default_rng(0).normal(0, 1, (2, dims))  # the same projection for train and validation
    x = plane @ lift + rng.normal(0, 0.05, (n, dims))
    return x.astype(np.float32), y


class MLP:
    def __init__(self, sizes: list[int], rng: np.random.Generator) -> None:
        self.w = [rng.normal(0, math.sqrt(2.0 / a), (a, b)).astype(np.float32) for a, b in itertools.pairwise(sizes)]
        self.b = [np.zeros(b, np.float32) for b in sizes[1:]]
        self.vw = [np.zeros_like(w) for w in self.w]
        self.vb = [np.zeros_like(b) for b in self.b]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        acts = [x]
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            x = x @ w + b
            if i < len(self.w) - 1:
                x = np.maximum(x, 0.0)
            acts.append(x)
        return x, acts

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float, list, list]:
        logits, acts = self.forward(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        d = p
        d[np.arange(len(y)), y] -= 1.0
        d /= len(y)
        gw, gb = [], []
        for i in reversed(range(len(self.w))):
            gw.insert(0, acts[i].T @ d)
            gb.insert(0, d.sum(axis=0))
            if i:
                d = (d @ self.w[i].T) * (acts[i] > 0)
        norm = math.sqrt(sum(float((g * g).sum()) for g in gw + gb))
        return loss, norm, gw, gb

    def step(self, gw: list, gb: list, lr: float, momentum: float = 0.9) -> None:
        for i in range(len(self.w)):
            self.vw[i] = momentum * self.vw[i] - lr * gw[i]
            self.vb[i] = momentum * self.vb[i] - lr * gb[i]
            self.w[i] += self.vw[i]
            self.b[i] += self.vb[i]

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        loss, _, _, _ = self.loss_and_grads(x, y)
        logits, _ = self.forward(x)
        return loss, float((logits.argmax(axis=1) == y).mean())


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=250)
    args = parser.parse_args()

    rng = np.random.default_rng(42)
    x_train, y_train = make_data(20000, rng)
    x_val, y_val = make_data(2000, rng)
    model = MLP([x_train.shape[1], 256, 256, 3], rng)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(x_train), args.batch)
        lr = learning_rate(step, args.steps, args.lr, warmup=args.steps // 20)
        loss, grad_norm, gw, gb = model.loss_and_grads(x_train[idx], y_train[idx])
        model.step(gw, gb, lr)
        llamamon.log({"loss": loss, "learning_rate": lr, "grad_norm": grad_norm}, step=step)
        if step % args.eval_every == 0 or step == args.steps:
            val_loss, val_acc = model.evaluate(x_val, y_val)
            llamamon.log({"validation_loss": val_loss, "validation_accuracy": val_acc}, step=step)
            rate = step / (time.perf_counter() - started)
            print(
                f"step {step:5d} | loss {loss:.4f} | lr {lr:.2e} | val_loss {val_loss:.4f} "
                f"| val_acc {val_acc:.3f} | {rate:.0f} steps/s",
                flush=True,
            )
    print(f"done: {args.steps} steps in {time.perf_counter() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main()
