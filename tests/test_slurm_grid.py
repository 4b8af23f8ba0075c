"""The grid through a real SLURM cluster (fixture `slurm_cluster`, tests/conftest.py): a rehearsal sample as job
arrays, and tasks that SLURM kills (time limit, scancel) recorded with SLURM's reason while every other outcome is
kept; a rerun then resumes."""
import json
import os
from pathlib import Path

import nbformat
import pytest

from vit_plasticity.cli import main
from vit_plasticity.grid import Run, grid_status, plan, run_grid

pytestmark = pytest.mark.slurm


def test_rehearsal_sample_as_job_arrays(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("VITP_RUNS", str(tmp_path / "runs"))
    argv = ["grid", "run", "paper", "--rehearse", "--sample", "12", "--executor", "slurm",
            "--partition", slurm_cluster.partition]
    assert main(argv) == 0
    runs, folder = plan("paper", rehearse=True, sample=12)
    assert set(grid_status("paper", rehearse=True, sample=12).values()) == {"done"}
    jobs = json.loads((folder / ".submitit" / "jobs.json").read_text())
    assert set(jobs) == {r.id for r in runs}
    envs = [json.loads((folder / r.id / "env.json").read_text()) for r in runs]
    assert all(e["slurm"] and e["slurm"]["SLURM_JOB_ID"] for e in envs)  # each ran as a SLURM task
    in_arrays = [e for e in envs if "SLURM_ARRAY_JOB_ID" in e["slurm"]]  # a kind of one run is a single job
    assert len(in_arrays) >= len(envs) - 4
    assert {e["device"] for e in envs} == {"cpu"}  # `auto` resolved in the task: no GPU on this cluster
    assert main(["report", "paper", "--rehearse", "--sample", "12"]) == 0


TOY = """import os, time
from pathlib import Path
from vit_plasticity.runs import finish_run, start_run
d = start_run(run_dir, {"lr": lr, "action": action}, device)
if action == "sleep" and Path(flag).exists(): time.sleep(600)  # far past its time limit
if action == "cancel" and Path(flag).exists():
    os.system(f"scancel {os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}")
    time.sleep(600)
finish_run(d, {"status": "ok", "test_acc": lr})
"""


def toy_notebooks(folder: Path, flag: Path) -> Path:
    "Experiment notebooks of two kinds that sleep past their time limit or cancel themselves while `flag` exists."
    params = (f"run_dir: str = ''  # run folder\ndevice: str = 'cpu'  # device\nlr: float = 0.1  # value\n"
              f"action: str = 'none'  # none, sleep or cancel\nflag: str = '{flag}'  # misbehave while it exists\n")
    for kind in ("finetune", "bounds"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                                             nbformat.v4.new_code_cell(TOY)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
        nbformat.write(nb, folder / f"{kind}.ipynb")
    return folder


def test_killed_tasks_are_recorded_with_slurms_reason_and_a_rerun_resumes(slurm_cluster, tmp_path):
    flag = tmp_path / "misbehave"
    flag.touch()
    nbs = toy_notebooks(tmp_path, flag)
    spec = {"name": "killed", "blocks": [
        {"kind": "finetune", "grid": {"lr": [0.1, 0.2], "action": ["none"]}},
        {"kind": "finetune", "params": {"lr": 0.3, "action": "cancel"}},
        {"kind": "bounds", "params": {"lr": 0.4, "action": "sleep"}}],
        "slurm": {"time": 5, "kinds": {"bounds": {"time": 1}}}}
    root, settings = tmp_path / "runs", {"partition": slurm_cluster.partition}
    out = run_grid(spec, executor="slurm", root=root, notebooks=nbs, slurm=settings, progress=False)
    ids = {r.params["action"] + str(r.params["lr"]): r.id for r in
           [Run(b["kind"], p) for b, p in [(spec["blocks"][0], {"lr": 0.1, "action": "none"}),
                                           (spec["blocks"][0], {"lr": 0.2, "action": "none"}),
                                           (spec["blocks"][1], spec["blocks"][1]["params"]),
                                           (spec["blocks"][2], spec["blocks"][2]["params"])]]}
    assert out == {ids["none0.1"]: "done", ids["none0.2"]: "done", ids["cancel0.3"]: "failed",
                   ids["sleep0.4"]: "failed"}
    error = lambda key: json.loads((root / ids[key] / "metrics.json").read_text())["error"]
    assert error("cancel0.3").startswith("SLURM CANCELLED"), error("cancel0.3")
    assert error("sleep0.4").startswith("SLURM TIMEOUT"), error("sleep0.4")
    assert "raise `time`" in error("sleep0.4")
    flag.unlink()  # the causes are gone: a rerun of the failed runs finishes the grid, the others are kept
    done_before = (root / ids["none0.1"] / "DONE").read_text()
    out = run_grid(spec, executor="slurm", root=root, notebooks=nbs, slurm=settings, retry_failed=True,
                   progress=False)
    assert sorted(out.values()) == ["done", "done", "skipped", "skipped"]
    assert (root / ids["none0.1"] / "DONE").read_text() == done_before
    assert set(grid_status(spec, root, notebooks=nbs).values()) == {"done"}
