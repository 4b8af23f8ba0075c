"End-to-end: papermill experiment notebooks and grids, run in a temporary runs folder."
import json, os, subprocess, sys
from pathlib import Path

import papermill as pm
import pytest

from vit_plasticity.grid import expand, grid_status, notebooks_dir, run_grid
from vit_plasticity.cli import main

ENV = {"OMP_NUM_THREADS": "1"}

@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VITP_RUNS", str(tmp_path / "runs"))
    for k, v in ENV.items(): monkeypatch.setenv(k, v)
    return tmp_path / "runs"

def test_injected_parameters_reach_the_run(tmp_path, runs):
    "A sentinel learning rate and seed injected by papermill are the ones the run used and recorded."
    run_dir = tmp_path / "ft"; run_dir.mkdir()
    pm.execute_notebook(str(notebooks_dir() / "finetune.ipynb"), str(run_dir / "notebook.ipynb"), progress_bar=False,
                        parameters=dict(run_dir=str(run_dir), lr=0.0123, seed=7, n_steps=3, eval_period=3, dataset="digits"))
    params, metrics = (json.loads((run_dir / f).read_text()) for f in ("params.json", "metrics.json"))
    assert (params["lr"], params["seed"], params["dataset"]) == (0.0123, 7, "digits")
    assert metrics["lr"] == 0.0123 and metrics["steps_done"] == 3
    assert (run_dir / "DONE").exists() and (run_dir / "history.csv").exists() and (run_dir / "env.json").exists()
    injected = [c for c in json.loads((run_dir / "notebook.ipynb").read_text())["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "lr = 0.0123" in "".join(injected[0]["source"])

def test_paper_grid_plans_924_finetuning_runs(capsys):
    assert main(["grid", "run", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "finetune         924" in out and "linear_probe      22" in out
    assert sum(r.kind == "finetune" for r in expand("ablation-adamw")) == 288
    assert sum(r.kind == "finetune" for r in expand("ablation-size")) == 144

def test_unknown_parameter_is_refused_before_anything_runs(tmp_path, runs):
    spec = {"name": "typo", "blocks": [{"kind": "finetune", "grid": {"learning_rate": [0.1]}}]}
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['learning_rate'\]"):
        run_grid(spec, progress=False)
    assert not (runs / "typo").exists()

def test_smoke_grid_runs_then_skips_completed_runs(runs):
    out = run_grid("smoke", jobs=2, progress=False)
    assert set(out.values()) == {"done"}, out
    assert set(grid_status("smoke").values()) == {"done"}
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("smoke/*/DONE")}
    assert len(stamps) == 5
    assert set(run_grid("smoke", progress=False).values()) == {"skipped"}
    assert stamps == {p: p.stat().st_mtime_ns for p in runs.glob("smoke/*/DONE")}  # nothing re-ran
    report = subprocess.run([str(Path(sys.executable).parent / "vitp"), "report", "smoke"], capture_output=True, text=True,
                            env={**os.environ})
    assert report.returncode == 0, report.stderr
    text = (runs / "smoke" / "report" / "report.md").read_text()
    assert "Runs planned: 5; done: 5." in text and "## Plasticity" in text and "## Finetuning" in text
