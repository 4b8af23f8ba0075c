"End-to-end: papermill experiment notebooks and grids, run in a temporary runs folder."
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
from torch.utils.data import DataLoader

from vit_plasticity.grid import expand, grid_status, notebooks_dir, run_grid
from vit_plasticity.cli import main
from vit_plasticity.data import Split, dataset_splits, plasticity_images
from vit_plasticity.models import load_vit
from vit_plasticity.plasticity import layer_summary, measure_plasticity
from vit_plasticity.probe import linear_probe

ENV = {"OMP_NUM_THREADS": "1"}

@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VITP_RUNS", str(tmp_path / "runs"))
    for k, v in ENV.items(): monkeypatch.setenv(k, v)
    return tmp_path / "runs"

def _execute(name: str, run_dir: Path, **parameters) -> tuple[dict, dict]:
    "Run experiment notebook `name` by papermill into `run_dir`; its recorded parameters and metrics."
    run_dir.mkdir()
    pm.execute_notebook(str(notebooks_dir() / f"{name}.ipynb"), str(run_dir / "notebook.ipynb"),
                        progress_bar=False, parameters=dict(run_dir=str(run_dir), **parameters))
    return tuple(json.loads((run_dir / f).read_text()) for f in ("params.json", "metrics.json"))

def test_injected_parameters_reach_the_run(tmp_path, runs):
    "Sentinel lr, seed and final_eval injected by papermill are the ones the run used and recorded."
    run_dir = tmp_path / "ft"
    params, metrics = _execute("finetune", run_dir, lr=0.0123, seed=7, n_steps=4, eval_period=3,
                               final_eval=True, dataset="digits")
    assert (params["lr"], params["seed"], params["dataset"]) == (0.0123, 7, "digits") and params["final_eval"]
    assert metrics["lr"] == 0.0123 and metrics["steps_done"] == 4
    assert (run_dir / "DONE").exists() and (run_dir / "history.csv").exists() and (run_dir / "env.json").exists()
    history = pd.read_csv(run_dir / "history.csv")
    assert history.dropna(subset=["valid_acc"]).step.tolist() == [3, 4]  # step 4 validated because final_eval
    cells = json.loads((run_dir / "notebook.ipynb").read_text())["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "lr = 0.0123" in "".join(injected[0]["source"])

def test_plasticity_run_pairs_as_injected(tmp_path, runs):
    "n_pairs past the 359 digits test images: layers.csv follows the injected pairing, not the default one."
    params, metrics = _execute("plasticity", tmp_path / "pl", dataset="digits", n_pairs=400, batch_size=128,
                               protocols="paper", pairing="cycle_all")
    assert (params["pairing"], params["n_pairs"], metrics["status"]) == ("cycle_all", 400, "ok")
    layers = pd.read_csv(tmp_path / "pl" / "layers.csv")
    net, src, tgt = load_vit("tiny-fmnist"), plasticity_images("fmnist", 400), plasticity_images("digits", pairing="cycle_all")
    def reference(rule: str) -> pd.DataFrame:
        "The layer summary of the target indexed by hand under `rule`, measured in one batch."
        m = len(tgt) if rule == "cycle_all" else 128 * (len(tgt) // 128)
        df = measure_plasticity(net, src, tgt[[k % m for k in range(400)]], batch_size=400, progress=False)
        return layer_summary(df)
    cols = ["mean", "std", "ci", "depth"]
    np.testing.assert_allclose(layers[cols].to_numpy(), reference("cycle_all")[cols].to_numpy(), rtol=1e-5)
    assert not np.allclose(layers["mean"], reference("authors")["mean"], rtol=1e-5)

def test_linear_probe_run_uses_the_injected_split_and_features(tmp_path, runs):
    "split_seed 7 and clean features injected: the run scores as an independent probe on that split does."
    params, metrics = _execute("linear_probe", tmp_path / "lp", dataset="digits", split_seed=7,
                               train_features="clean")
    assert (params["split_seed"], params["train_features"], params["seed"]) == (7, "clean", 0)
    train, _, test = dataset_splits("digits", seed=7)
    clean = Split(train.base, train.idxs, test.tfm)
    train_dl, test_dl = DataLoader(clean, batch_size=256), DataLoader(test, batch_size=256)
    ref = linear_probe(load_vit("tiny-fmnist"), train_dl, test_dl)
    keys = ("n_train", "train_acc", "test_acc")
    assert [metrics[k] for k in keys] == [ref[k] for k in keys]

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
