"""Reliability under crashes and failures: kill -9 and restart, atomic writes, concurrent launchers,
failed and diverged runs in the report, determinism. Bad input is in test_bad_input.py.

Every launcher runs with VITP_RUNS in a temporary folder and OMP_NUM_THREADS=1. The crash tests use the real
`smoke` grid; the lock tests use a toy experiment notebook (seconds, no torch) that logs each execution."""
import json, os, random, re, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vit_plasticity.analysis import write_report
from vit_plasticity.grid import RunLock, execute_run, expand, grid_status, run_grid
from vit_plasticity.runs import DONE, atomic_write_json, finish_run, read_run, run_status, start_run
from vit_plasticity.stats import best_lr, read_runs, seed_cells

VITP = str(Path(sys.executable).parent / "vitp")
LINUX = sys.platform.startswith("linux")

def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}

def alive(pid: int) -> bool:
    "Whether `pid` runs (a zombie, dead but not reaped by its new parent, does not)."
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError): return False

def children(pid: int) -> list[int]:
    "Processes whose parent is `pid` (from /proc)."
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try: fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError: continue
        if int(fields[1]) == pid: out.append(int(stat.parent.name))
    return out

def wait_for(cond, timeout: float, every: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (v := cond()): return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VITP_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "runs"

# A toy experiment notebook: records its kernel's pid, appends one line per execution to `log`, sleeps, can fail.
TOY_PARAMS = ("run_dir: str = ''  # run folder\ndevice: str = 'cpu'  # device\nseed: int = 0  # seed\n"
              "sleep: float = 0.0  # seconds to sleep\nlog: str = ''  # file logging each execution\nfail: bool = False  # raise\n")
TOY_CODE = ("import os, time\nfrom pathlib import Path\nfrom vit_plasticity.runs import finish_run, start_run\n"
            "start_run(run_dir, dict(seed=seed))\nPath(run_dir, 'kernel.pid').write_text(str(os.getpid()))\n"
            "if log:\n    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
            "    os.write(fd, (Path(run_dir).name + '\\n').encode()); os.close(fd)\n"
            "time.sleep(sleep)\nassert not fail, 'asked to fail'\nPath(run_dir, 'late.txt').write_text('after the sleep')\n"
            "finish_run(run_dir, dict(status='ok', seed=seed))\n")

def toy_notebooks(folder: Path) -> Path:
    cells = [dict(cell_type="code", id=f"c{i}", metadata={"tags": ["parameters"]} if i == 0 else {}, execution_count=None,
                  outputs=[], source=s) for i, s in enumerate([TOY_PARAMS, TOY_CODE])]
    nb = dict(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}},
              nbformat=4, nbformat_minor=5)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "finetune.ipynb").write_text(json.dumps(nb))
    return folder

def launch(spec: dict, root: Path, notebooks: Path, tmp: Path) -> subprocess.Popen:
    "A launcher process running `run_grid` on `spec`; prints the outcomes as JSON on its last line."
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = ("import json, sys; from vit_plasticity.grid import run_grid; "
            "print(json.dumps(run_grid(sys.argv[1], root=sys.argv[2], notebooks=sys.argv[3], progress=False)))")
    return subprocess.Popen([sys.executable, "-c", code, str(path), str(root), str(notebooks)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

# ---------------------------------------------------------------------------------------------------------------
# Kill -9 and restart

@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_kernel_dies_with_its_launcher_and_holds_the_run_lock_until_then(tmp_path):
    "SIGKILL the launcher mid-run: its kernel dies at once, and the run is never unlocked while the kernel lives."
    nbs, root = toy_notebooks(tmp_path / "nbs"), tmp_path / "runs"
    spec = {"name": "orphan", "blocks": [{"kind": "finetune", "params": {"sleep": 1.5}, "grid": {"seed": [0]}}]}
    run_dir = root / expand(spec)[0].id
    launcher = launch(spec, root, nbs, tmp_path)
    try: kernel = int(wait_for(lambda: (run_dir / "kernel.pid").exists() and (run_dir / "kernel.pid").read_text(), 90, what="kernel"))
    finally: launcher.kill(); launcher.wait()
    killed, unlocked_while_alive, acquired = time.monotonic(), [], False
    while time.monotonic() - killed < 3:  # probe: whenever the lock can be taken, the kernel must be dead
        with RunLock(run_dir) as lock:
            acquired = lock.acquired
            if acquired and alive(kernel): unlocked_while_alive.append(time.monotonic() - killed)
        if acquired: break
        time.sleep(0.01)
    died_within = time.monotonic() - killed
    assert not unlocked_while_alive, f"run unlocked while its orphaned kernel ran ({unlocked_while_alive[:3]} s after the kill)"
    assert acquired and not alive(kernel) and died_within < 1.0, f"kernel alive={alive(kernel)} {died_within:.2f}s after the kill"
    time.sleep(1.7)  # past the notebook's sleep: a surviving kernel would now write
    assert not (run_dir / "late.txt").exists() and run_status(run_dir) == "partial"

@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_sigkill_mid_smoke_grid_then_restart_finishes_only_the_missing_runs(runs):
    grid = runs / "smoke"
    launcher = subprocess.Popen([VITP, "grid", "run", "smoke", "--jobs", "2"], env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def mid_grid():  # at least three runs complete and one started (its parameters recorded) but not finished
        dirs = [d for d in grid.glob("*") if d.is_dir()] if grid.exists() else []
        done = [d for d in dirs if (d / DONE).exists()]
        started = [d for d in dirs if not (d / DONE).exists() and (d / "params.json").exists()]
        return len(done) >= 3 and started and children(launcher.pid)  # a kernel in flight
    try:
        wait_for(mid_grid, 240, what="the middle of the smoke grid")
        kernels = children(launcher.pid)
    finally: launcher.kill(); launcher.wait()
    assert kernels, "no kernel was running"
    wait_for(lambda: not any(alive(k) for k in kernels), 2, what="the kernels to die with their launcher")

    before = grid_status("smoke")
    done_before = {i for i, s in before.items() if s == "done"}
    partial = {i for i, s in before.items() if s == "partial"}
    assert len(done_before) >= 3 and partial and set(before.values()) <= {"done", "partial", "missing"}, before
    for i in partial: (grid / i / "stale.txt").write_text("left by the killed attempt")
    stamps = lambda ids: {i: [(grid / i / f).stat().st_mtime_ns for f in (DONE, "metrics.json", "notebook.ipynb")] for i in ids}
    kept = stamps(done_before)
    restarted = time.time()

    out = subprocess.run([VITP, "grid", "run", "smoke", "--jobs", "2"], env=env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert set(grid_status("smoke").values()) == {"done"}
    assert stamps(done_before) == kept  # the runs completed before the kill were not executed again
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, re.M))
    assert counts == {"done": str(5 - len(done_before)), "skipped": str(len(done_before))}, out.stdout
    for i in set(before) - done_before:  # each missing or partial run executed once more, from a clean folder
        assert (grid / i / "notebook.ipynb").stat().st_mtime > restarted
        assert not (grid / i / "stale.txt").exists()
        assert json.loads((grid / i / "metrics.json").read_text())["status"] == "ok"

def test_no_run_counts_as_done_without_its_metrics(tmp_path):
    rd = start_run(tmp_path / "r", {"lr": 0.1})
    assert run_status(rd) == "partial"
    (rd / DONE).write_text("")  # a marker alone
    assert run_status(rd) == "partial"
    for bad in ('{"test_acc": 0.', "", "[1]"):  # unreadable or not a mapping
        (rd / "metrics.json").write_text(bad); assert run_status(rd) == "partial"
    finish_run(rd, {"status": "ok", "test_acc": 0.5})
    assert run_status(rd) == "done"
    assert read_run(rd)["run_status"] == "done"

# ---------------------------------------------------------------------------------------------------------------
# Atomic writes

def _failing_replace(names: set[str], real=os.replace):
    def replace(src, dst, *a, **k):
        if Path(dst).name in names: raise OSError(28, "No space left on device (simulated)")
        return real(src, dst, *a, **k)
    return replace

def test_a_failed_write_leaves_the_previous_file_and_no_debris(tmp_path, monkeypatch):
    rd = start_run(tmp_path / "r", {"lr": 0.1})
    finish_run(rd, {"status": "ok", "test_acc": 0.5}, pd.DataFrame({"step": [1], "loss": [1.0]}))
    files = {p.name: p.read_bytes() for p in rd.iterdir()}
    monkeypatch.setattr(os, "replace", _failing_replace({"metrics.json"}))
    with pytest.raises(OSError, match="simulated"): finish_run(rd, {"status": "ok", "test_acc": 0.9})
    assert json.loads((rd / "metrics.json").read_text())["test_acc"] == 0.5  # the previous metrics, whole
    monkeypatch.setattr(os, "replace", _failing_replace({DONE}))
    (rd / DONE).unlink()
    with pytest.raises(OSError, match="simulated"): finish_run(rd, {"status": "ok", "test_acc": 0.9})
    assert run_status(rd) == "partial"  # metrics written, marker not: not done
    assert sorted(p.name for p in rd.iterdir()) == sorted(set(files) - {DONE})  # no temporary file left

def test_sigkill_mid_write_leaves_a_whole_file(tmp_path):
    "A writer killed at random moments: the file always holds one complete version."
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"i": -1, "pad": "x" * 1_000_000})
    code = ("import sys; from vit_plasticity.runs import atomic_write_json\ni = 0\n"
            "while True: atomic_write_json(sys.argv[1], {'i': i, 'pad': 'x' * 1_000_000}); i += 1")
    rng, versions = random.Random(0), set()
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env())
        time.sleep(1.0 + rng.random())  # past the imports, into the loop
        writer.kill(); writer.wait()
        m = json.loads(path.read_text())
        assert len(m["pad"]) == 1_000_000
        versions.add(m["i"])
    assert versions != {-1}, "the writer never got to write"
    assert {p.name for p in tmp_path.iterdir()} - {"metrics.json"} <= {p.name for p in tmp_path.glob(".metrics.json.*.tmp")}

# ---------------------------------------------------------------------------------------------------------------
# Two launchers on one grid

def test_two_launchers_never_execute_a_run_twice(tmp_path):
    nbs, root, log = toy_notebooks(tmp_path / "nbs"), tmp_path / "runs", tmp_path / "executions.log"
    spec = {"name": "twice", "blocks": [{"kind": "finetune", "params": {"sleep": 0.3, "log": str(log)}, "grid": {"seed": list(range(6))}}]}
    launchers = [launch(spec, root, nbs, tmp_path) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in launchers]
    ids = [r.id for r in expand(spec)]
    assert sorted(log.read_text().split()) == sorted(ids)  # every run executed exactly once
    for i in ids: assert sorted(o[i] for o in outs) in (["done", "locked"], ["done", "skipped"]), (i, outs)
    assert set(grid_status(spec, root, notebooks=nbs).values()) == {"done"}

# ---------------------------------------------------------------------------------------------------------------
# Failed and diverged runs, and the report

FAIL_SPEC = {"name": "failures", "defaults": {"model": "tiny-fmnist", "dataset": "digits", "n_steps": 4, "warmup_steps": 1,
                                               "eval_period": 2, "batch_size": 32},
             "blocks": [{"kind": "finetune", "grid": {"train": ["MHA"], "lr": [0.01], "seed": [0, 1]}},
                        {"kind": "finetune", "grid": {"train": ["LN1"], "lr": [0.01], "seed": [0]}},
                        {"kind": "finetune", "params": {"eval_period": 10}, "grid": {"train": ["LN1"], "lr": [0.01], "seed": [1]}},  # raises
                        {"kind": "finetune", "grid": {"train": ["MHA"], "lr": [1.0e20], "seed": [0]}}]}  # diverges
MISSING_BLOCK = {"kind": "finetune", "grid": {"train": ["FC1"], "lr": [0.01], "seed": [0]}}  # planned, never run

@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    root = tmp_path_factory.mktemp("failures") / "runs"
    old = os.environ.get("OMP_NUM_THREADS"); os.environ["OMP_NUM_THREADS"] = "1"
    try: out = run_grid(FAIL_SPEC, jobs=2, root=root, progress=False)
    finally: os.environ.pop("OMP_NUM_THREADS") if old is None else os.environ.update(OMP_NUM_THREADS=old)
    return root, out, {(r.params["train"], r.params["lr"], r.params["seed"], r.params["eval_period"]): r for r in expand(FAIL_SPEC)}

def test_failed_and_diverged_runs_are_recorded_and_the_grid_goes_on(failures):
    root, out, runs = failures
    failed, diverged = runs[("LN1", 0.01, 1, 10)], runs[("MHA", 1e20, 0, 2)]
    assert out[failed.id] == "failed" and sorted(out.values()) == ["done"] * 4 + ["failed"]
    m = json.loads((root / failed.id / "metrics.json").read_text())
    assert m["status"] == "failed" and "eval_period=10" in m["error"] and m["notebook"] == "notebook.ipynb"
    nb = (root / failed.id / "notebook.ipynb").read_text()
    assert "ValueError" in nb and "the run would never be validated" in nb  # the traceback is kept
    m = json.loads((root / diverged.id / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["steps_done"] < 4 and run_status(root / diverged.id) == "done"
    assert (root / diverged.id / "notebook.ipynb").exists() and (root / diverged.id / "history.csv").exists()

def test_report_counts_failed_and_missing_runs_and_flags_incomplete_seed_sets(failures, monkeypatch):
    root, out, runs = failures
    spec = {**FAIL_SPEC, "blocks": FAIL_SPEC["blocks"] + [MISSING_BLOCK]}
    missing = expand({"name": "m", "defaults": FAIL_SPEC["defaults"], "blocks": [MISSING_BLOCK]})[0]
    planned = [{"id": r.id, "kind": r.kind, **r.params} for r in expand(FAIL_SPEC)]
    best = best_lr(seed_cells(read_runs(planned, root)[0]))
    ln1, mha = ("tiny-fmnist", "sgd", "digits", "LN1"), ("tiny-fmnist", "sgd", "digits", "MHA")
    assert best.loc[ln1, "complete"] == False and best.loc[ln1, ["n_seeds", "n_planned"]].tolist() == [1, 2]
    assert best.loc[mha, "complete"] == True and best.loc[mha, "lr"] == 0.01  # 1e20 diverged: it cannot win
    report = write_report(spec, root)
    text = report.read_text()
    assert "Runs planned: 6;" in text and "failed: 1" in text and "missing: 1" in text
    assert f"`{runs[('LN1', 0.01, 1, 10)].id}`: failed" in text and f"`{missing.id}`: missing" in text
    assert "— (1 of 2 seeds)" in text  # the LN1 cell has one seed of two: no LR qualifies, and it says so
    # the report is written atomically: a failure while writing it leaves the previous one whole
    before = report.read_bytes()
    monkeypatch.setattr(os, "replace", _failing_replace({"report.md"}))
    with pytest.raises(OSError, match="simulated"): write_report(spec, root)
    assert report.read_bytes() == before and not list(report.parent.glob(".report.md.*"))

# ---------------------------------------------------------------------------------------------------------------
# Determinism

def test_same_seed_gives_identical_run_metrics_on_cpu(failures, tmp_path, monkeypatch):
    "The finetune notebook, executed again through papermill with the same parameters, gives the same metrics and history."
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, _, runs = failures
    run = runs[("MHA", 0.01, 0, 2)]
    assert execute_run(run, tmp_path / "again") == "done"
    a, b = (json.loads((r / run.id / "metrics.json").read_text()) for r in (root, tmp_path / "again"))
    timing = {"wall_time_s", "images_per_s"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert a["test_acc"] is not None
    pd.testing.assert_frame_equal(*(pd.read_csv(r / run.id / "history.csv") for r in (root, tmp_path / "again")))

def test_plasticity_does_not_depend_on_the_batch_size():
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from vit_plasticity.plasticity import measure_plasticity
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    src, tgt = torch.randn(12, 3, 32, 32, generator=g), torch.randn(5, 3, 32, 32, generator=g)
    for protocol in ("paper", "in_situ"):
        ratios = [measure_plasticity(model, src, tgt, protocol=protocol, batch_size=bs, pairing="cycle_all",
                                      progress=False)["ratio"].to_numpy()
                  for bs in (1, 4, 12)]
        for r in ratios[1:]: np.testing.assert_allclose(r, ratios[0], rtol=1e-5, atol=0)

def test_a_first_ctrl_c_collects_each_run_once():
    "Runs collected before the Ctrl-C are not collected again (the progress bar counted them twice)."
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace
    from vit_plasticity.grid import _on_ctrl_c
    go, outcomes, calls = threading.Event(), {}, []
    runs = [SimpleNamespace(id=f"r{i}") for i in range(4)]
    with ThreadPoolExecutor(2) as pool:
        futures = {pool.submit(lambda: "done"): runs[0]}  # finished and collected before the Ctrl-C
        next(iter(futures)).result()
        futures |= {pool.submit(go.wait): r for r in runs[1:3]}  # in flight
        futures[pool.submit(lambda: "done")] = runs[3]  # queued: cancelled
        def collect(f):
            calls.append(futures[f].id)
            outcomes[futures[f].id] = f.result()
        collect(next(iter(futures)))
        threading.Timer(0.2, go.set).start()
        interrupted = _on_ctrl_c(futures, outcomes, collect)
    assert sorted(calls) == ["r0", "r1", "r2"]  # r0 once, before; the two in flight once each; r3 never
    assert set(interrupted.outcomes) == {"r0", "r1", "r2"}
