"""The real-GPU check of issue 17, run by bench/gpu_check.sh: one verdict a line, results.json and a log.

    bash bench/gpu_check.sh OUT_DIR

Steps, each under its own timeout, all within BUDGET_S: a fresh venv with the project (and, once a GPU is
seen, a CUDA build of torch from the registry); nvidia-smi sees a GPU (else it stops there, saying so);
``llamamon doctor``; ``llamamon record --interval 0.5 -- python bench/gpu_job.py`` with the GPU collector
and again with ``--no-gpu``; the recorded values against nvidia-smi and torch.cuda (bench/gpu_check_analysis.py),
and every GPU metric recorded or declared unavailable in the run's metadata;
the report (HTML, Markdown, and a headless Chromium screenshot where Chromium is installed).

Environment:
  GPU_CHECK_PYTHON  an interpreter that already has the project's dependencies (and CUDA torch): no venv
  GPU_CHECK_VENV    where to make the venv (default: a fresh temporary folder)
  GPU_CHECK_TORCH   "skip": never install torch (a dry run); else the pip arguments for it (default "torch",
                    the registry's default build, CUDA on x86_64 Linux)
  GPU_CHECK_SECONDS how long the job keeps the GPU busy (default 15: 30 samples at 0.5 s)

Only the standard library here: it must run on a bare machine before anything is installed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu_check_analysis as an  # noqa: E402
from bench.gpu_check_analysis import Verdict  # noqa: E402

JOB = REPO / "bench" / "gpu_job.py"
# What llamamon imports (pyproject.toml's dependencies, by import name): enough to run from the checkout.
DEPENDENCIES = ("click", "psutil", "pynvml", "polars", "pyarrow", "matplotlib", "jinja2", "yaml", "aiosmtplib", "numpy")
BUDGET_S = 470.0  # the 8 minutes, less what the shell wrapper and Python start-up take


class Stop(Exception):
    """A step whose failure leaves nothing after it worth running: ``Stop(step, reason)``."""


class Check:
    """Runs commands under timeouts, logs everything, keeps the verdicts and writes the results."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.started = time.time()
        self.deadline = time.monotonic() + BUDGET_S
        self.verdicts: list[Verdict] = []
        self.figures: dict[str, Any] = {}
        self.log = open(out / "gpu_check.log", "a", encoding="utf-8")  # noqa: SIM115 (closed in finish)

    def left(self, want: float) -> float:
        """A step's timeout: what it wants, within what the whole check has left."""
        left = self.deadline - time.monotonic()
        if left < 5:
            raise Stop("budget", f"out of the check's {BUDGET_S:.0f} s")
        return min(want, left)

    def say(self, *verdicts: Verdict) -> None:
        for v in verdicts:
            self.verdicts.append(v)
            print(v.line(), flush=True)
            self.log.write(v.line() + "\n")
        self.log.flush()

    def run(self, cmd: list[str], want_s: float, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``cmd`` under a timeout, in a session of its own so that a timeout kills what it started too
        (the recorded job holds the GPU); a timeout is exit status 124, as timeout(1) gives."""
        timeout = self.left(want_s)
        self.log.write(f"\n$ {shlex.join(cmd)}   (timeout {timeout:.0f}s)\n")
        self.log.flush()
        pipe = subprocess.PIPE
        try:
            proc = subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, start_new_session=True, **kw)
        except OSError as exc:
            return self._logged(subprocess.CompletedProcess(cmd, 127, "", str(exc)))
        try:
            out, err = proc.communicate(timeout=timeout)
            done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            done = subprocess.CompletedProcess(cmd, 124, out, err + f"\n[timed out after {timeout:.0f}s]")
        return self._logged(done)

    def _logged(self, done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        self.log.write(done.stdout + done.stderr + f"[exit {done.returncode}]\n")
        self.log.flush()
        return done

    def finish(self) -> int:
        failed = [v for v in self.verdicts if v.verdict == "FAIL"]
        result = {
            "started": self.started,
            "seconds": round(time.time() - self.started, 1),
            "passed": not failed and bool(self.verdicts),
            "checks": [v.as_dict() for v in self.verdicts],
            "figures": self.figures,
        }
        (self.out / "results.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        summary = f"{len(self.verdicts) - len(failed)} of {len(self.verdicts)} checks passed or skipped"
        print(f"gpu_check: {summary}; results in {self.out}/results.json, log in {self.out}/gpu_check.log")
        self.log.close()
        return 1 if failed or not self.verdicts else 0


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def setup_python(ck: Check) -> str:
    """The interpreter the checks use: GPU_CHECK_PYTHON, or a fresh venv with the project installed."""
    given = os.environ.get("GPU_CHECK_PYTHON")
    if given:
        ck.say(Verdict("python", "PASS", f"{given} (GPU_CHECK_PYTHON, no venv)"))
        return given
    venv = Path(os.environ.get("GPU_CHECK_VENV") or tempfile.mkdtemp(prefix="llamamon-gpu-check-"))
    # Why system site packages: an image that ships CUDA torch (and no registry access) still works.
    made = ck.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], 120)
    python = str(venv / "bin" / "python")
    if made.returncode != 0:
        raise Stop("python", f"python -m venv {venv} failed: {made.stderr.strip()[-300:]}")
    pip = ck.run([python, "-m", "pip", "install", "--quiet", str(REPO)], 240)
    if pip.returncode == 0:
        ck.say(Verdict("python", "PASS", f"venv {venv} with the project installed"))
        return python
    # No registry (a machine cut off from the network): the system's packages may still have what it needs.
    have = ck.run([python, "-c", f"import {', '.join(DEPENDENCIES)}"], 120)
    if have.returncode != 0:
        reason = f"pip install of the project failed (exit {pip.returncode}) and the system lacks its dependencies"
        raise Stop("python", f"{reason}: {(pip.stderr or have.stderr).strip()[-300:]}")
    ck.say(Verdict("python", "PASS", f"venv {venv}: pip failed, the system's packages have every dependency"))
    return python


def gpu_present(ck: Check) -> list[dict[str, str]]:
    """The first GPU step: nvidia-smi lists the GPUs, or the check stops here with the reason."""
    if shutil.which("nvidia-smi") is None:
        raise Stop("nvidia-smi", "not found on PATH: no NVIDIA driver on this machine")
    fields = "index,name,driver_version,memory.total,memory.used,power.draw,temperature.gpu,clocks.sm,clocks.mem"
    done = ck.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"], 30)
    if done.returncode != 0 or not done.stdout.strip():
        reason = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise Stop("nvidia-smi", f"exit {done.returncode}: {reason[0]} (no usable NVIDIA GPU)")
    keys = fields.split(",")
    gpus = [dict(zip(keys, (c.strip() for c in line.split(",")), strict=False)) for line in done.stdout.splitlines()]
    ck.figures["nvidia_smi"] = gpus
    ck.say(Verdict("nvidia-smi", "PASS", f"{len(gpus)} GPU(s): {gpus[0]['name']}, driver {gpus[0]['driver_version']}"))
    return gpus


def ensure_torch(ck: Check, python: str) -> None:
    probe = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    have = ck.run([python, "-c", probe], 120)
    if have.returncode == 0 and have.stdout.split()[-1:] == ["True"]:
        ck.say(Verdict("torch", "PASS", f"CUDA torch already there: {have.stdout.strip()}"))
        return
    spec = os.environ.get("GPU_CHECK_TORCH", "torch")
    if spec == "skip":
        raise Stop("torch", "no CUDA build of torch here, and GPU_CHECK_TORCH=skip")
    pip = ck.run([python, "-m", "pip", "install", "--quiet", *shlex.split(spec)], 330)
    have = ck.run([python, "-c", probe], 120)
    if pip.returncode != 0 or have.returncode != 0 or have.stdout.split()[-1:] != ["True"]:
        detail = (pip.stderr or have.stderr or have.stdout).strip()[-300:]
        raise Stop("torch", f"no CUDA build of torch after pip install {spec}: {detail}")
    ck.say(Verdict("torch", "PASS", f"installed {have.stdout.strip()}"))


def llamamon(python: str) -> list[str]:
    return [python, "-m", "llamamon"]


def env() -> dict[str, str]:
    """The checkout first on the path (the code under test, whatever the venv holds); no user config."""
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    e.pop("LLAMAMON_CONFIG", None)
    return e


def doctor(ck: Check, python: str, smi: list[dict[str, str]]) -> None:
    done = ck.run([*llamamon(python), "doctor", "--json"], 60, env=env(), cwd=ck.out)
    try:
        gpu = json.loads(done.stdout)["gpu"]
    except (ValueError, KeyError):
        raise Stop("doctor", f"llamamon doctor --json gave no GPU section (exit {done.returncode})") from None
    ck.figures["doctor_gpu"] = gpu
    devices = gpu.get("gpus") or []
    if not gpu.get("available") or not devices:
        ck.say(Verdict("doctor", "FAIL", f"no GPU: {gpu.get('reason')}"))
        return
    first = devices[0]
    name, driver = str(first.get("name", "")), str(gpu.get("driver_version", ""))
    total = float(first.get("memory_total") or 0) / an.MIB
    ok = name == smi[0]["name"] and driver == smi[0]["driver_version"]
    ck.say(Verdict("doctor", "PASS" if ok else "FAIL", f"{name}, driver {driver} (nvidia-smi: {smi[0]['name']})"))
    if total:
        ck.say(an.within("doctor memory total vs nvidia-smi", total, float(smi[0]["memory.total"]), an.TOLERANCE))


def record(ck: Check, python: str, name: str, metrics: Path, gpu: bool) -> dict[str, Any]:
    """One recorded job; what the board cannot give is in its runs/<id>.json (``run_metadata``)."""
    job_out = ck.out / f"job-{name}.json"
    seconds = os.environ.get("GPU_CHECK_SECONDS", "15")
    cmd = [
        *llamamon(python),
        "record",
        "--interval",
        "0.5",
        "--name",
        name,
        "--no-alerts",
        "--metrics-dir",
        str(metrics),
    ]
    cmd += ([] if gpu else ["--no-gpu"]) + ["--", python, str(JOB)]
    cmd += ["--seconds", seconds, "--out", str(job_out)]
    done = ck.run(cmd, float(seconds) + 90, env=env(), cwd=ck.out)
    text = done.stdout + done.stderr
    (ck.out / f"record-{name}.log").write_text(text, encoding="utf-8")
    job = json.loads(job_out.read_text()) if job_out.exists() else {}
    ok = done.returncode == 0 and bool(job)
    figure = f"exit {done.returncode}, {job.get('steps', 0)} steps"
    ck.say(Verdict(f"record ({name})", "PASS" if ok else "FAIL", figure))
    if not ok:
        raise Stop(f"record ({name})", f"see {ck.out}/record-{name}.log")
    csv_path = ck.out / f"rows-{name}.csv"
    ck.run(
        [*llamamon(python), "export", "csv", "--run", name, "--metrics-dir", str(metrics), "-o", str(csv_path)],
        120,
        env=env(),
    )
    rows = an.read_csv(csv_path) if csv_path.exists() else []
    cpu = {"cpu_seconds": job.get("recorder_cpu_seconds"), "samples": an.ticks(rows, job["busy_from"], job["busy_to"])}
    return {"job": job, "rows": rows, "log": text, "cpu": cpu}


def gpu_metric_names() -> list[str]:
    from llamamon import catalog

    return [m.name for m in catalog.METRICS if m.group == "gpu"]


def run_metadata(metrics: Path, name: str) -> dict[str, Any]:
    """runs/<id>.json of the run recorded as ``name``: its ``gpu`` section says what each GPU could not read."""
    for path in sorted((metrics / "runs").glob("*.json")):
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("name") == name:
            return meta
    return {}


def compare(ck: Check, on: dict[str, Any], run_meta: dict[str, Any]) -> None:
    rows, job, gpu = on["rows"], on["job"], "0"
    snap = job.get("snapshot")
    ck.figures["job"] = {k: v for k, v in job.items() if k != "snapshot"}
    ck.figures["snapshot"] = snap
    ck.say(an.check_samples(rows, gpu), an.check_utilization(rows, gpu, job))
    ck.say(*an.check_memory(rows, gpu, snap), *an.check_process_memory(rows, gpu, snap))
    ck.say(*an.check_energy(rows, gpu), *an.check_plausible(rows, gpu, job), *an.check_torch_figures(rows, snap))
    ck.figures["unavailable"] = [d.get("unavailable") for d in run_meta.get("gpu", {}).get("gpus") or []]
    ck.say(*an.check_metrics_present(rows, gpu_metric_names(), run_meta, gpu))


def report(ck: Check, python: str, metrics: Path, job: dict[str, Any]) -> None:
    from llamamon.gpu_peaks import peak_for

    html, md = ck.out / "report.html", ck.out / "report.md"
    base = [*llamamon(python), "report", "--run", "gpu-on", "--metrics-dir", str(metrics)]
    done = ck.run([*base, "-o", str(html)], 180, env=env())
    page = html.read_text(encoding="utf-8", errors="replace") if html.exists() else ""
    wanted = ("GPU utilisation", "GPU memory", "GPU power", "GPU temperature", 'id="panel-gpu-0"')
    panels = [t for t in wanted if t in page]
    ok = done.returncode == 0 and len(panels) == len(wanted)
    ck.say(Verdict("report", "PASS" if ok else "FAIL", f"exit {done.returncode}, {len(page):,} bytes, panels {panels}"))
    ck.run([*base, "--markdown", "-o", str(md)], 180, env=env())
    peak = peak_for(job.get("device_name", ""))
    ck.say(*an.check_mfu(md.read_text(encoding="utf-8") if md.exists() else "", job, peak and peak.tflops))
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None or not ok:
        ck.say(Verdict("screenshot", "SKIP", "no Chromium on PATH" if browser is None else "no report"))
        return
    shot = ck.out / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,6000"]
    ck.run([browser, *flags, f"--screenshot={shot}", html.as_uri()], 90)
    size = shot.stat().st_size if shot.exists() else 0
    ck.say(Verdict("screenshot", "PASS" if size > 10_000 else "FAIL", f"{shot.name}, {size:,} bytes"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: bash bench/gpu_check.sh OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ck = Check(out)
    try:
        python = setup_python(ck)
        smi = gpu_present(ck)
        ensure_torch(ck, python)
        doctor(ck, python, smi)
        metrics = Path(tempfile.mkdtemp(prefix="llamamon-gpu-check-metrics-"))
        on = record(ck, python, "gpu-on", metrics, gpu=True)
        off = record(ck, python, "gpu-off", metrics, gpu=False)
        compare(ck, on, run_metadata(metrics, "gpu-on"))
        ck.figures["recorder_cpu"] = {"gpu_on": on["cpu"], "gpu_off": off["cpu"]}
        ck.say(an.check_recorder_cpu(on["cpu"], off["cpu"]))
        report(ck, python, metrics, on["job"])
    except Stop as stop:
        step, reason = stop.args
        ck.say(Verdict(step, "FAIL", f"{reason}; stopping here, the steps after it need this one"))
    return ck.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
