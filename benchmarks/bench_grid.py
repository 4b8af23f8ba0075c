"""Target 5: papermill's per-run overhead (fresh kernel, imports, notebook I/O) against running the same experiment
notebook's code as a function in this process; its share of the smoke and demo grids' wall time."""
from __future__ import annotations
import io, json, shutil, sys, tempfile, time
from contextlib import redirect_stdout
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # in-process runs only; the papermill kernels keep their own (inline) backend
import matplotlib.pyplot as plt

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import Row, median
from vit_plasticity.grid import Run, execute_run, expand, notebook_for
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


def run_with_papermill(run: Run, root: Path) -> tuple[float, dict]:
    "The grid's own per-run path (`execute_run`: lock, papermill, fresh kernel); wall time and the cells' durations."
    t0 = time.perf_counter()
    assert execute_run(run, root) == "done"
    dt = time.perf_counter() - t0
    nb = json.loads((root / run.id / "notebook.ipynb").read_text())
    durations = [c["metadata"].get("papermill", {}).get("duration") or 0.0 for c in nb["cells"]]
    return dt, dict(cells=sum(durations), imports=durations[_imports_cell(nb)])


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
    tmp = Path(tempfile.mkdtemp(prefix="vitp-bench-grid-"))  # every run folder goes here, removed afterwards
    try: return _target5(cfg, tmp, log)
    finally: shutil.rmtree(tmp, ignore_errors=True)


def _target5(cfg: dict, tmp: Path, log) -> list[Row]:
    run = next(r for r in expand("smoke") if r.kind == "finetune")
    _prime_data(run)
    run_as_function(run, tmp / "warm")  # warm imports and caches of this process
    log(f"  target 5: smoke finetune run {run.id}, papermill vs function, {cfg['reps']} rounds")
    pm_t, fn_t, info = [], [], []
    for r in range(cfg["reps"]):
        order = ("pm", "fn") if r % 2 == 0 else ("fn", "pm")
        for which in order:
            if which == "pm":
                t, i = run_with_papermill(run, tmp / f"pm{r}"); pm_t.append(t); info.append(i)
            else: fn_t.append(run_as_function(run, tmp / f"fn{r}"))
    over = [p - f for p, f in zip(pm_t, fn_t)]
    ov, pm_m = median(over), median(pm_t)
    kernel = median([p - i["cells"] for p, i in zip(pm_t, info)])
    imports = median([i["imports"] for i in info])
    rows = [Row("5a grid: papermill overhead per run", f"papermill {pm_m:.1f} s vs function {median(fn_t):.1f} s; of the "
                f"overhead: kernel start + notebook I/O {kernel:.1f} s, imports cell {imports:.1f} s", ov, "<= 5 s", ov <= 5),
            Row("5b grid: overhead share, smoke finetune run", f"{ov:.1f} s of {pm_m:.1f} s", ov / pm_m, "reported", None)]
    if cfg.get("demo"):
        rows.append(_demo_share(ov, tmp, log))
    return rows


def _demo_share(overhead: float, tmp: Path, log) -> Row:
    "Estimated share of the demo grid's wall time: its run count, and one run of each kind timed as a function."
    runs = expand("demo")
    kinds = {r.kind: r for r in reversed(runs)}  # the first run of each kind
    per_kind = {}
    for kind, r in kinds.items():
        _prime_data(r)
        log(f"  target 5: demo {kind} run as a function ({r.id})")
        per_kind[kind] = run_as_function(r, tmp / "demo")
    compute = sum(per_kind[r.kind] for r in runs)
    share = len(runs) * overhead / (len(runs) * overhead + compute)
    detail = ", ".join(f"{sum(r.kind == k for r in runs)} {k} x {t:.0f} s" for k, t in per_kind.items())
    return Row("5c grid: overhead share, demo grid (estimate)", f"{len(runs)} runs x {overhead:.1f} s vs {compute / 60:.1f} "
               f"min of runs ({detail})", share, "reported", None)
