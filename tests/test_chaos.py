"""A chaos test: a small grid killed at random moments (SIGKILL, SIGTERM, one or two SIGINTs), its run folders
corrupted at random (truncated, deleted, garbled, made unreadable, replaced by a file), on a full disk where one can
be made; then resumed and reported. Hypothesis draws the cases from a fixed seed and a fixed budget.

Invariants after every case:
- no run counts as done unless every file of its folder is whole (its manifest verifies, its JSON parses);
- no completed run is lost or redone, unless the chaos damaged it (then it is redone);
- the report equals the one of an uninterrupted grid, or names the runs it left out;
- the launcher never prints a raw traceback."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from vit_plasticity.grid import expand
from vit_plasticity.runs import DONE, file_sha, run_status

TOY_PARAMS = """run_dir: str = ''  # run folder
device: str = 'cpu'  # device
model: str = 'tiny-fmnist'  # model
dataset: str = 'digits'  # dataset
train: str = 'MHA'  # configuration
lr: float = 0.1  # learning rate
seed: int = 0  # seed
sleep: float = 0.4  # seconds of work
"""
TOY_CODE = """import time
import pandas as pd
from vit_plasticity.runs import finish_run, start_run
d = start_run(run_dir, dict(model=model, dataset=dataset, train=train, lr=lr, seed=seed, opt="sgd"), device)
time.sleep(sleep)
acc = round(0.5 + 0.1 * ["LN1", "MHA", "FC1"].index(train) + lr / 10 + seed / 1000, 4)
history = pd.DataFrame(dict(step=[1, 2], train_loss=[1.0, 0.5], valid_acc=[None, acc]))
finish_run(d, dict(status="ok", test_acc=acc, best_valid_acc=acc, steps_done=2), history)
"""
SPEC = {"name": "chaos", "defaults": {"model": "tiny-fmnist", "dataset": "digits"},
        "blocks": [{"kind": "finetune", "grid": {"train": ["LN1", "MHA"], "lr": [0.1, 0.3], "seed": [0]}}]}
RUNS = [r.id for r in expand(SPEC)]
FILES = ("metrics.json", "params.json", "env.json", "history.csv", "notebook.ipynb", DONE)
LAUNCH = "import sys; from vit_plasticity.cli import main; sys.exit(main(sys.argv[1:]))"


def toy_notebooks(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(TOY_PARAMS, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(TOY_CODE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "finetune.ipynb")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    "Toy notebooks, the grid file, and the report of an uninterrupted grid (the reference)."
    tmp = tmp_path_factory.mktemp("chaos")
    nbs, grid = toy_notebooks(tmp / "nbs"), tmp / "chaos.yaml"
    grid.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "VITP_NOTEBOOKS": str(nbs), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    ref = tmp / "reference"
    assert vitp(env, "grid", "run", grid, "--root", ref, "--jobs", "2").returncode == 0
    assert vitp(env, "report", grid, "--root", ref).returncode == 0
    return dict(tmp=tmp, grid=grid, env=env, reference=table(ref))


def vitp(env: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", LAUNCH, *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]  # never a raw traceback
    return out


def table(root: Path) -> pd.DataFrame:
    "The report's best-LR table (every planned run done: the grid's whole table)."
    return pd.read_csv(root / "report" / "best_lr_test.csv").sort_values(list(pd.read_csv(
        root / "report" / "best_lr_test.csv").columns[:2])).reset_index(drop=True)


def whole(run_dir: Path) -> bool:
    "Every file of a done run's manifest is there with its digest, and its JSON files parse."
    manifest = json.loads((run_dir / DONE).read_text())
    for name, sha in manifest["files"].items():
        if file_sha(run_dir / name) != sha: return False
    for name in ("metrics.json", "params.json", "env.json", "notebook.ipynb"):
        json.loads((run_dir / name).read_text())
    return True


def interrupt(env: dict, grid: Path, root: Path, how: str, after: float) -> None:
    "Start a launcher, and signal it `after` seconds later as `how` says; it must end without a traceback."
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "grid", "run", str(grid), "--root", str(root),
                             "--jobs", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    if how == "SIGINT x2":
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    proc.send_signal({"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}.get(how, signal.SIGINT))
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    if how.startswith("SIGINT") and proc.returncode != 0: assert proc.returncode == 130, (proc.returncode, err)


def corrupt(run_dir: Path, name: str, how: str) -> None:
    "Damage one file of a run folder (or the folder itself)."
    f = run_dir / name
    if how == "folder->file":
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.write_text("a file where a run folder was")
    elif not f.exists(): return
    elif how == "truncate": f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    elif how == "delete": f.unlink()
    elif how == "garble": f.write_bytes(bytes(b ^ 0x5A for b in f.read_bytes()[:64]) + f.read_bytes()[64:])
    elif how == "chmod": f.chmod(0)


damage = st.tuples(st.integers(0, len(RUNS) - 1), st.sampled_from(FILES),
                   st.sampled_from(["truncate", "delete", "garble", "chmod", "folder->file"]))


@seed(20261202)
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(how=st.sampled_from(["SIGKILL", "SIGTERM", "SIGINT", "SIGINT x2"]), after=st.floats(1.0, 9.0),
       damages=st.lists(damage, max_size=3))
def test_chaos_then_resume_and_report(world, how, after, damages):
    root = world["tmp"] / f"case-{time.monotonic_ns()}"
    interrupt(world["env"], world["grid"], root, how, after)
    done_before = {i: (root / i / DONE).read_bytes() for i in RUNS if run_status(root / i) == "done"}
    assert all(whole(root / i) for i in done_before)  # nothing is done that is not whole
    damaged = set()
    for k, name, how_ in damages:
        if (root / RUNS[k]).exists():
            corrupt(root / RUNS[k], name, how_)
            damaged.add(RUNS[k])
    status = {i: run_status(root / i) for i in RUNS}
    for i, s in status.items():
        if s == "done": assert whole(root / i), i  # a damaged done run is no longer done
    out = vitp(world["env"], "grid", "run", world["grid"], "--root", root, "--jobs", "2")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    for i in RUNS: assert run_status(root / i) == "done" and whole(root / i), i
    for i, marker in done_before.items():  # completed and undamaged: not redone
        if i not in damaged and status[i] == "done": assert (root / i / DONE).read_bytes() == marker, i
    report = vitp(world["env"], "report", world["grid"], "--root", root)
    assert report.returncode == 0, report.stderr[-2000:]
    pd.testing.assert_frame_equal(table(root), world["reference"])


def test_a_full_disk_fails_runs_by_name_and_a_resume_on_space_finishes(world):
    "On a tmpfs with room for about one run, runs fail or stay partial without a traceback; given space, it finishes."
    if os.geteuid() != 0 or shutil.which("mount") is None: pytest.skip("a small tmpfs needs root")
    mnt = world["tmp"] / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * (free - 48 * 1024))  # 48 KiB left: about one run's files
        out = vitp(world["env"], "grid", "run", world["grid"], "--root", mnt / "runs", "--jobs", "2")
        assert out.returncode != 0, out.stdout
        states = {i: run_status(mnt / "runs" / i) for i in RUNS}
        assert "done" not in states.values() or set(states.values()) != {"done"}, states
        for i, s in states.items():
            if s == "done": assert whole(mnt / "runs" / i), i
        (mnt / "filler").unlink()  # space again: the same command (failed runs retried) finishes the grid
        out = vitp(world["env"], "grid", "run", world["grid"], "--root", mnt / "runs", "--jobs", "2",
                   "--retry-failed")
        assert out.returncode == 0, out.stdout + out.stderr[-2000:]
        assert {run_status(mnt / "runs" / i) for i in RUNS} == {"done"}
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
