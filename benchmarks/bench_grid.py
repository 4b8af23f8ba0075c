"""Target 5: the per-run overhead of papermill, with a fresh kernel (kernel start, imports, notebook I/O)
and with the grid's warm kernels (started and imported beforehand, handed to the run as `run_local` does),
against running the same experiment notebook's code as a function in this process; its share of the smoke
and demo grids' time."""
from __future__ import annotations
import io, json, shutil, sys, tempfile, time
from contextlib import redirect_stdout
from functools import partial
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # in-process runs only; the papermill kernels keep their own (inline) backend
import matplotlib.pyplot as plt

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import Row, interleaved, median
from vit_plasticity.grid import Run, WarmKernels, execute_run, expand, notebook_for
from vit_plasticity.runs import run_status


def _code_cells(kind: str) -> tuple[str, list[str]]:
    "The parameters cell and the other code cells of the experiment notebook of `kind`."
    cells = [c for c in json.loads(notebook_for(kind).read_text())["cells"] if c["cell_type"] == "code"]
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    return "".join(params[0]["source"]), ["".join(c["source"]) for c in cells if c not in params]


def run_as_function(run: Run, root: Path, device: str = "cpu") -> float:
    """The run `execute_run` would do, as a function: the notebook's own cells executed in this process (warm
    imports, no kernel, no notebook file), with the same injected parameters and the same run folder written."""
    params_src, cells = _code_cells(run.kind)
    ns: dict = {}
    t0 = time.perf_counter()
    exec(params_src, ns)
    ns.update(run.params, run_dir=str(root / run.id), device=device)
    with redirect_stdout(io.StringIO()):  # progress bars: a kernel would capture them into the notebook
        for src in cells: exec(src, ns)
    dt = time.perf_counter() - t0
    plt.close("all")
    assert run_status(root / run.id) == "done", run_status(root / run.id)
    return dt


def run_with_papermill(run: Run, root: Path, kernels: WarmKernels | None = None) -> tuple[float, dict]:
    """The grid's own per-run path (`execute_run`: lock, papermill; a fresh kernel, or one of `kernels` handed
    over as `run_local` does); wall time and the cells' durations."""
    t0 = time.perf_counter()
    assert execute_run(run, root, kernels=kernels) == "done"
    dt = time.perf_counter() - t0
    nb = json.loads((root / run.id / "notebook.ipynb").read_text())
    durations = [c["metadata"].get("papermill", {}).get("duration") or 0.0 for c in nb["cells"]]
    return dt, dict(cells=sum(durations), imports=durations[_imports_cell(nb)])


def _wait_warmed(kernels: WarmKernels) -> float:
    "Wait until the kernel warming in the background (if any) is ready to be taken; the seconds waited."
    t0 = time.perf_counter()
    while kernels.pending and kernels.ready.empty(): time.sleep(0.05)
    return time.perf_counter() - t0


def _one_warm_kernel() -> WarmKernels:
    "A pool holding one kernel, warmed now, that warms no other: the run then has no warm-up beside it."
    kernels = WarmKernels(1, budget=1)
    kernels.ready.put(kernels._start())
    kernels.started = kernels.pending = 1
    return kernels


def _imports_cell(nb: dict) -> int:
    "Index of the first code cell after the injected parameters (it holds the notebook's imports)."
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    return next(i for i, t in enumerate(tags) if "injected-parameters" in t) + 1


def _prime_data(run: Run) -> None:
    "Build the run's cached datasets beforehand (a one-time cost on a machine, not a per-run one)."
    from vit_plasticity.data import dataset_splits, plasticity_sample
    p = run.params
    if run.kind in ("finetune", "linear_probe"): dataset_splits(p["dataset"], seed=p.get("seed", 0))
    if run.kind == "plasticity": plasticity_sample(p["source"], 1); plasticity_sample(p["dataset"], 1)
    if run.kind == "bounds": plasticity_sample(p["dataset"], 1)


def target5(cfg: dict, log) -> list[Row]:
    import papermill
    tmp = Path(tempfile.mkdtemp(prefix="vitp-bench-grid-"))  # every run folder goes here, removed afterwards
    execute = papermill.execute_notebook  # papermill gives a kernel 60 s to start: too few at a load of 15
    papermill.execute_notebook = partial(execute, start_timeout=cfg.get("start_timeout", 600))
    try: return _target5(cfg, tmp, log)
    finally:
        papermill.execute_notebook = execute
        shutil.rmtree(tmp, ignore_errors=True)


def _target5(cfg: dict, tmp: Path, log) -> list[Row]:
    run = next(r for r in expand("smoke") if r.kind == "finetune")
    _prime_data(run)
    run_as_function(run, tmp / "warm")  # warm imports and caches of this process
    log(f"  target 5: smoke finetune run {run.id}: function, papermill with a fresh kernel, papermill with a "
        f"warm kernel; {cfg['reps']} rounds")
    kernels = WarmKernels(1, budget=cfg["reps"] + 1)  # one per warm call, the untimed warm-up's included
    info, n, warming, start = {"cold": [], "warm": []}, iter(range(10**6)), [], kernels._start

    def timed_start():  # how long warming a kernel takes (in the background while a run executes)
        t0 = time.perf_counter()
        km = start()
        warming.append(time.perf_counter() - t0)
        return km
    kernels._start = timed_start

    def papermill(which: str):
        def call() -> float:
            if which == "warm": _wait_warmed(kernels)  # as in a grid whose previous run outlasted the warming
            pool, t0 = kernels, time.perf_counter()
            if which == "warm" and not cfg.get("overlap", True):
                pool = _one_warm_kernel()  # warmed here, untimed: no warm-up runs beside this run
                warming.append(time.perf_counter() - t0)
            t, i = run_with_papermill(run, tmp / f"{which}{next(n)}", pool if which == "warm" else None)
            if pool is not kernels: pool.close()
            if which == "warm": _wait_warmed(kernels)  # the next kernel warms off the clock of other variants
            info[which].append(i)
            return t
        return call

    try:
        t = interleaved({"function": lambda: run_as_function(run, tmp / f"fn{next(n)}"),
                         "cold": papermill("cold"), "warm": papermill("warm")}, cfg["reps"], warmup=1)
    finally: kernels.close()
    timed = {k: v[1:] for k, v in info.items()}  # not the warm-up round
    return _target5_rows(cfg, t, timed, median(warming), tmp, log)


def _target5_rows(cfg: dict, t: dict, info: dict, warming: float, tmp: Path, log) -> list[Row]:
    "The rows of target 5 from the interleaved times: each overhead is the median of per-round differences."
    over = {k: median([a - b for a, b in zip(t[k], t["function"])]) for k in ("cold", "warm")}
    gap = {k: median([a - i["cells"] for a, i in zip(t[k], info[k])]) for k in over}
    imports = {k: median([i["imports"] for i in info[k]]) for k in over}
    fn, cold, warm = (median(t[k]) for k in ("function", "cold", "warm"))
    rel = median([(w - f) / (c - f) for c, w, f in zip(t["cold"], t["warm"], t["function"])])
    rows = [Row("5a grid: papermill overhead per run, fresh kernel",
                f"papermill {cold:.1f} s vs function {fn:.1f} s; of the overhead: kernel start + notebook "
                f"I/O {gap['cold']:.1f} s, imports cell {imports['cold']:.1f} s",
                over["cold"], "<= 5 s", over["cold"] <= 5),
            Row("5b grid: papermill overhead per run, warm kernel",
                f"papermill {warm:.1f} s vs function {fn:.1f} s; hand-over + notebook I/O + shutdown "
                f"{gap['warm']:.1f} s, imports cell {imports['warm']:.2f} s; "
                f"warming the next kernel (in the background): {warming:.1f} s; "
                f"{rel:.2f} of the fresh kernel's overhead", over["warm"], "<= 1 s", over["warm"] <= 1),
            Row("5c grid: overhead share, smoke finetune run",
                f"fresh kernel {over['cold']:.1f} s of {cold:.1f} s; warm kernel {over['warm']:.1f} s of "
                f"{warm:.1f} s (ratio: warm)", over["warm"] / warm, "reported", None)]
    if cfg.get("demo"):
        rows.append(_demo_share(over, tmp, log))
    return rows


def _demo_share(overhead: dict, tmp: Path, log) -> Row:
    """Estimated share of the demo grid's wall time, with fresh and with warm kernels: its run count, and one
    run of each kind timed as a function."""
    runs = expand("demo")
    kinds = {r.kind: r for r in reversed(runs)}  # the first run of each kind
    per_kind = {}
    for kind, r in kinds.items():
        _prime_data(r)
        log(f"  target 5: demo {kind} run as a function ({r.id})")
        per_kind[kind] = run_as_function(r, tmp / "demo")
    compute = sum(per_kind[r.kind] for r in runs)
    share = {k: len(runs) * o / (len(runs) * o + compute) for k, o in overhead.items()}
    detail = ", ".join(f"{sum(r.kind == k for r in runs)} {k} x {t:.0f} s" for k, t in per_kind.items())
    return Row("5d grid: overhead share, demo grid (estimate)",
               f"{len(runs)} runs x {overhead['cold']:.1f} s (fresh kernels, share {share['cold']:.3f}) or x "
               f"{overhead['warm']:.1f} s (warm, the grid's default) vs "
               f"{compute / 60:.1f} min of runs ({detail}); ratio: warm", share["warm"], "reported", None)
