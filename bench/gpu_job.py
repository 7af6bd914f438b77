"""The CUDA job bench/gpu_check.py records: bf16 matmuls plus a small training step, long enough for the
recorder's samples, and what the job itself sees to compare them with.

It keeps its GPU memory constant once warmed up (same tensors every step), so a snapshot of
``torch.cuda`` and ``nvidia-smi`` taken mid-run is what every later sample should read as well. It logs
through llamamon: a token count (one matmul of an n x n activation block = n tokens through an n x n
layer, 2n^2 FLOPs a token forward) and those FLOPs per token, so the report's MFU can be checked against
the TFLOP/s the job measures itself with CUDA events, and torch.cuda's allocator figures.

    python bench/gpu_job.py --seconds 15 --out job.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import time

import torch

import llamamon
from llamamon.monitors import log_cuda_memory


def nvidia_smi(*query: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20
    )
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def snapshot(device: torch.device) -> dict:
    """What torch and nvidia-smi say about memory now (MiB from nvidia-smi, bytes from torch)."""
    torch.cuda.synchronize(device)
    before = time.time()
    free, total = torch.cuda.mem_get_info(device)
    gpu = nvidia_smi("--query-gpu=memory.used,memory.total", "-i", str(device.index or 0))
    apps = nvidia_smi("--query-compute-apps=pid,used_memory")
    return {
        "time": (before + time.time()) / 2,
        "torch_used": total - free,
        "torch_total": total,
        "torch_reserved": torch.cuda.memory_reserved(device),
        "torch_allocated": torch.cuda.memory_allocated(device),
        "smi_memory_used_mib": float(gpu[0][0]) if gpu else None,
        "smi_memory_total_mib": float(gpu[0][1]) if gpu else None,
        "smi_apps": [{"pid": int(p), "used_mib": float(m)} for p, m in apps if p.isdigit() and _number(m)],
        "pid": os.getpid(),
    }


def parent_cpu_seconds() -> float | None:
    """CPU time of the process that started this job (``llamamon record``), from /proc: read at the start
    and the end of the busy loop, it is the recorder's cost for those samples, without its start-up."""
    try:
        with open(f"/proc/{os.getppid()}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--ballast-gib", type=float, default=16.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_job: torch.cuda.is_available() is False (a CPU build of torch, or no GPU)")
    device = torch.device("cuda", 0)
    n = args.size
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    # Ballast: GPU memory in the tens of GiB, as an LLM job holds, so that the 5 % comparisons are of that
    # size and not of a CUDA context's few hundred MiB (which NVML's v1 and v2 "used" count differently).
    free, _total = torch.cuda.mem_get_info(device)
    ballast = torch.empty(min(int(args.ballast_gib * (1 << 30)), free // 2), dtype=torch.uint8, device=device)
    ballast.fill_(1)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(256, 1024, device=device)
    llamamon.log(model_flops_per_token=2.0 * n * n)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    tokens, matmul_ms, step, snap = 0, 0.0, 0, None
    first_log = last_log = (0.0, 0)  # (time, tokens) of the first and the last count logged, as the report sees them
    recorder_from, busy_from = parent_cpu_seconds(), time.time()
    while time.time() - busy_from < args.seconds:
        start.record()
        for _ in range(20):
            c = a @ w
        end.record()
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        end.synchronize()
        matmul_ms += start.elapsed_time(end)
        tokens += 20 * n
        step += 1
        llamamon.log(num_input_tokens_seen=tokens, loss=float(loss), step=step)
        last_log = (time.time(), tokens)
        first_log = first_log if step > 1 else last_log
        log_cuda_memory(step=step)
        if snap is None and time.time() - busy_from > 0.4 * args.seconds:
            snap = snapshot(device)
    recorder_to, busy_to = parent_cpu_seconds(), time.time()
    del c, ballast
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "busy_from": busy_from,
        "busy_to": busy_to,
        "steps": step,
        "tokens": tokens,
        "flops_per_token": 2.0 * n * n,
        "matmul_tflops": 2.0 * n**3 * 20 * step / (matmul_ms / 1000) / 1e12,
        "logged_first": first_log,
        "logged_last": last_log,
        "snapshot": snap,
        "cpu_seconds": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime,
        "recorder_cpu_seconds": None if recorder_from is None or recorder_to is None else recorder_to - recorder_from,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(device),
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
