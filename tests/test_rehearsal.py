"""The paper's grids rehearsed end to end (run, status, report) on a stratified sample, and the report's tables
checked against an independent recomputation from the run folders' own files."""
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

import pandas as pd
import pytest

from vit_plasticity.cli import main
from vit_plasticity.grid import plan

SAMPLES = {"paper": 16, "ablation-adamw": 8, "ablation-size": 8}  # runs per grid in `make test`


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITP_RUNS", str(root))
        yield root


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize("grid", SAMPLES)
def test_rehearsed_sample_runs_and_reports(grid, runs_root, capsys):
    k = SAMPLES[grid]
    assert cli("grid", "run", grid, "--rehearse", "--sample", k, "--jobs", 2) == 0, capsys.readouterr().err
    runs, folder = plan(grid, rehearse=True, sample=k)
    assert folder == runs_root / "rehearsal" / grid  # apart from real runs
    assert all(r.params["model"].startswith("rehearse:") for r in runs)
    assert cli("grid", "status", grid, "--rehearse", "--sample", k) == 0
    assert cli("report", grid, "--rehearse", "--sample", k) == 0
    report = (folder / "report" / "report.md").read_text()
    assert report.startswith(f"# REHEARSAL of grid `{grid}`")
    assert f"Runs planned: {k}; done: {k}." in report
    check_tables_against_run_files(folder, runs)


def read(folder: Path, run) -> dict:
    d = folder / run.id
    return {**json.loads((d / "metrics.json").read_text()), **json.loads((d / "params.json").read_text())}


def check_tables_against_run_files(folder: Path, runs) -> None:
    """Best-LR accuracy per (model, optimiser, dataset, configuration), recomputed from metrics.json files with
    plain Python: an LR competes when every planned seed finished with a finite accuracy, none diverged, lr > 0."""
    by_cell = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.kind == "finetune":
            m = read(folder, r)
            by_cell[(m["model"], m["opt"], m["dataset"], m["train"])][m["lr"]].append(m)
    if not by_cell: return
    report = pd.read_csv(folder / "report" / "best_lr_test.csv", index_col=[0, 1, 2, 3])
    assert len(report) == len(by_cell)
    for cell, lrs in by_cell.items():
        ok = {lr: [100 * m["test_acc"] for m in ms] for lr, ms in lrs.items()
              if lr > 0 and all(m["status"] == "ok" and m.get("test_acc") is not None for m in ms)}
        row = report.loc[cell]
        if not ok:
            assert pd.isna(row["test_mean"]) and isinstance(row["reason"], str), cell
            continue
        lr = max(ok, key=lambda lr: (mean(ok[lr]), -lr))
        assert row["lr"] == pytest.approx(lr) or mean(ok[row["lr"]]) == pytest.approx(mean(ok[lr]))
        assert row["test_mean"] == pytest.approx(mean(ok[lr]))
        assert row["test_std"] == pytest.approx(pstdev(ok[lr]))
