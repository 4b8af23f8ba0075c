"Shared helpers of the benchmarks: interleaved timing, the machine's description, peak-memory probes, the table."
from __future__ import annotations
import json, os, platform, statistics, subprocess, sys, time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------- timing
def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each callable in `fns`, measured in `reps` rounds that run every callable once, in an order
    that alternates between rounds (so a drift in machine load hits every variant alike). `warmup` untimed rounds
    first. A callable may return a number of seconds of its own (e.g. training time only); else it is timed here."""
    names = list(fns)
    for _ in range(warmup):
        for n in names: fns[n]()
    times = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            own = fns[n]()
            times[n].append(own if isinstance(own, float) else time.perf_counter() - t0)
    return times


def median(xs) -> float: return float(statistics.median(xs))


def paired_ratio(num: list[float], den: list[float]) -> float:
    "Median over rounds of num/den: each round's two figures were measured seconds apart, under the same load."
    return median([a / b for a, b in zip(num, den)])


def matmul_rate(m: int, k: int, n: int, calls: int = 3):
    "A callable timing `calls` fp32 GEMMs (m, k) @ (k, n); returns its own seconds per GEMM."
    A, B = torch.randn(m, k), torch.randn(k, n)
    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(calls): torch.mm(A, B)
        return (time.perf_counter() - t0) / calls
    run.flops = 2.0 * m * k * n
    return run


# ---------------------------------------------------------------------------------------------------- machine
def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info() -> dict:
    "CPU model, cores usable by this process, memory, torch build and threads."
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512" if " avx512f " in flags else "AVX2" if " avx2 " in flags else "?"
    return dict(cpu=cpu, isa=isa, cores=len(os.sched_getaffinity(0)), ram_gb=round(int(mem) / 2**20, 1),
                torch=torch.__version__, threads=torch.get_num_threads(), blas="MKL" if torch.backends.mkl.is_available() else "?",
                python=platform.python_version(), omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"))


# ---------------------------------------------------------------------------------------------------- memory
MEM_METHOD = ("peak resident memory (Linux VmHWM) of a fresh Python process per variant, reset through "
              "/proc/self/clear_refs after building the model and inputs and one untimed warm-up call of the same size, minus the resident "
              "memory at that moment; glibc's mmap threshold is pinned at 64 KiB (MALLOC_MMAP_THRESHOLD_) so that "
              "every tensor buffer is its own mapping, returned to the OS when freed, and RSS follows live tensors")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"): return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> float:
    "Restart the process's peak-RSS counter (VmHWM) from the current RSS; returns that RSS in MiB."
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_since(base: float) -> float: return _status_mb("VmHWM") - base


def run_probe(script: str, *args: str, timeout: float = 900) -> dict:
    "Run `python benchmarks/<script> <args>` in a fresh process (pinned mmap threshold); parse its last line as JSON."
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if out.returncode: raise RuntimeError(f"{script} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- the table
@dataclass
class Row:
    target: str        # id and short description, e.g. "1b plasticity speed vs naive"
    measured: str      # the measured figures, readable
    value: float | None  # the ratio or value compared with the threshold (None: reported only)
    threshold: str     # e.g. ">= 1.7"
    ok: bool | None    # pass, fail, or None for a reported-only figure

    @property
    def verdict(self) -> str: return "—" if self.ok is None else "PASS" if self.ok else "SHORT"


def fmt_value(v: float | None) -> str:
    if v is None: return "—"
    return f"{v:.2e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.3f}"


def table(rows: list[Row], markdown: bool = False) -> str:
    head = ["target", "measured", "ratio / value", "threshold", "result"]
    body = [[r.target, r.measured, fmt_value(r.value), r.threshold, r.verdict] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body])
    w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w[i]) for i, c in enumerate(cells)).rstrip()
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(b) for b in body])
