"""The results object against an independent recomputation: synthetic run folders (two models on the same
datasets, two optimisers, diverged and failed seeds, lr = 0, a removed run, a stale code version, both
probes), every table recomputed from the folders' JSON files with plain Python, and the paper's own table
reproduced."""
import itertools, json, math, shutil, zlib
from collections import defaultdict
from pathlib import Path
from statistics import mean, median, pstdev

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from vit_plasticity.analysis import FigureItem, load_results, report_sections, summary_text, write_report
from vit_plasticity.analysis import grid_results
from vit_plasticity.grid import expand
from vit_plasticity.stats import (COMPONENT_ORDER, MATCHED, NOTEBOOK_DEFAULTS, paired_table, paired_tests,
                                  paper_error_bars, paper_main_table, relative_gain)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["full", "MHA", "FC1", "FC2", "LN2", "LN1"]
DATASETS = ["d1", "d2", "d3"]
LRS = [0.0, 0.01, 0.1]
SEEDS = [0, 1, 2]
BASE = {("small", "sgd"): 50.0, ("big", "sgd"): 90.0, ("small", "adamw"): 60.0}
SPEC = {"name": "synthetic", "description": "two models, two optimisers", "blocks": [
    {"kind": "finetune", "grid": {"model": ["small", "big"], "opt": ["sgd"], "dataset": DATASETS,
                                  "train": CONFIGS,
                                  "lr": LRS, "seed": SEEDS}},
    {"kind": "finetune", "grid": {"model": ["small"], "opt": ["adamw"], "dataset": DATASETS, "train": CONFIGS,
                                  "lr": LRS, "seed": SEEDS}},
    {"kind": "linear_probe", "grid": {"model": ["small", "big"], "dataset": DATASETS,
                                      "representation": ["MHA", "residual"]}},
    {"kind": "plasticity", "grid": {"model": ["small", "big"], "dataset": DATASETS}},
    {"kind": "bounds", "params": {"dataset": "d1"}, "grid": {"model": ["small", "big"]}}]}


def accuracy(p: dict) -> float:
    "Test accuracy in %: the model's base, a per-configuration and per-dataset effect, noise; lr 0 is poor."
    effect = {"full": 1.5, "MHA": 1.0, "FC1": 0.8, "FC2": 0.3, "LN2": -0.5, "LN1": -0.8}[p["train"]]
    key = repr((p["model"], p["opt"], p["dataset"], p["train"], p["lr"], p["seed"]))
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    value = BASE[(p["model"], p["opt"])] + effect * (1 + DATASETS.index(p["dataset"])) + 2 * (p["lr"] == 0.1)
    return value - 20 * (p["lr"] == 0.0) + rng.normal(0, 0.4)


def layers_table(model: str, dataset: str) -> pd.DataFrame:
    rng = np.random.default_rng(len(model) * 10 + DATASETS.index(dataset))
    scale = {"MHA": 7.0, "FC1": 4.0, "FC2": 2.0, "LN2": 0.5, "LN1": 0.4}
    rows = [(p, c, l, 100 * l / 3, scale[c] * (1 + 0.3 * rng.normal()) * (2 if model == "big" else 1), 0.1)
            for p in ("paper", "in_situ") for c in scale for l in range(4)]
    return pd.DataFrame(rows, columns=["protocol", "component", "layer", "depth", "mean", "ci"])


def bounds_table() -> pd.DataFrame:
    rows = [(l, c, b * 3, v) for v in ("paper", "corrected") for l in range(4)
            for c, b in {"MHA": 20.0, "FC1": 8.0, "FC2": 5.0, "LN2": 1.5, "LN1": 1.2}.items()]
    return pd.DataFrame(rows, columns=["layer", "component", "bound", "variant"])


def write_run(folder: Path, params: dict, metrics: dict | None, code: dict | None = None, files=()) -> None:
    folder.mkdir(parents=True)
    for name, table in files: table.to_csv(folder / name, index=False)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "env.json").write_text(json.dumps({"code": code} if code else {"host": "x"}))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "DONE").write_text("done\n")


CODE = {"git_commit": "abc", "notebook_sha": "n1", "library_sha": "l1"}
STALE = {"git_commit": "old", "notebook_sha": "n0", "library_sha": "l0"}


def special(p: dict) -> dict | None:
    "The runs that do not follow the formula: a diverged seed, a failed one, a top accuracy at lr 0."
    key = (p["model"], p["opt"], p["dataset"], p["train"], p["lr"], p["seed"])
    if key == ("small", "sgd", "d1", "MHA", 0.1, 1):  # diverged with the best accuracy of its cell
        return dict(status="diverged", test_acc=0.99, best_valid_acc=0.99)
    if key == ("small", "sgd", "d2", "FC1", 0.1, 2):  # diverged before any validation
        return dict(status="diverged", test_acc=None, best_valid_acc=None)
    if key == ("big", "sgd", "d3", "LN2", 0.01, 0):
        return dict(status="failed", error="RuntimeError: CUDA out of memory")
    if key[:4] == ("big", "sgd", "d3", "LN1") and p["lr"] > 0 and p["seed"] == 2:  # no LR complete
        return dict(status="failed", error="ValueError: killed")
    if p["lr"] == 0.0 and key[:4] == ("big", "sgd", "d2", "LN1"):  # lr 0 at the top: must not win
        return dict(status="ok", test_acc=0.999, best_valid_acc=0.999)
    return None


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "runs"
    runs = expand(SPEC)
    for r in runs:
        p = {"kind": r.kind, **r.params}
        code = STALE if (r.kind == "finetune" and p["dataset"] == "d3" and p["train"] == "FC2"
                         and p["seed"] == 0 and p["model"] == "big") else CODE
        if r.kind == "finetune":
            acc = accuracy(p) / 100
            metrics = special(p) or dict(status="ok", test_acc=acc,
                                         best_valid_acc=acc - 0.01 * (p["lr"] == 0.1))
            hist = pd.DataFrame({"step": [1, 2, 3], "grad_norm": [3.0, 2.0, 1.0],
                                 "valid_loss": [None, 1.0, 0.9]})
            write_run(root / r.id, p, metrics, code, [("history.csv", hist)])
        elif r.kind == "linear_probe":
            if p["model"] == "big" and p["dataset"] == "d2" and p["representation"] == "residual":
                continue  # never ran: big has no gain over the residual probe
            acc = {"small": 0.3, "big": 0.6}[p["model"]] + 0.05 * (p["representation"] == "residual")
            acc += 0.01 * DATASETS.index(p["dataset"])
            write_run(root / r.id, p, dict(status="ok", test_acc=acc), code)
        elif r.kind == "plasticity":
            layers = layers_table(p["model"], p["dataset"])
            write_run(root / r.id, p, dict(status="ok"), code, [("layers.csv", layers)])
        else:
            write_run(root / r.id, p, dict(status="ok"), code, [("bounds.csv", bounds_table())])
    removed = next(r for r in runs if r.kind == "finetune" and r.params["model"] == "small"
                   and r.params["opt"] == "adamw" and r.params["dataset"] == "d1"
                   and r.params["train"] == "FC2"
                   and r.params["lr"] == 0.01 and r.params["seed"] == 2)
    shutil.rmtree(root / removed.id)
    return root, runs, removed


def stand_in_check(layers: pd.DataFrame, bounds: pd.DataFrame) -> pd.DataFrame:
    "The bounds notebook's `bounds_check`, as its columns promise."
    m = layers.merge(bounds, on=["model", "layer", "component"]).rename(columns={"mean": "measured"})
    return m.assign(holds=m["measured"] <= m["bound"])[["model", "protocol", "layer", "component", "measured",
                                                         "bound", "variant", "holds"]]


@pytest.fixture(scope="module")
def res(grid):
    root, _, _ = grid
    return grid_results(SPEC, root, check=stand_in_check)


# ----------------------------------------------------------------------------------------------------
# The independent recomputation: the folders' JSON files read with plain Python

def records(root: Path, runs) -> list[dict]:
    out = []
    for r in runs:
        d = root / r.id
        rec = {"kind": r.kind, **r.params, "id": r.id, "done": (d / "DONE").exists()}
        if rec["done"]:
            rec.update(json.loads((d / "metrics.json").read_text()))
        out.append(rec)
    return out


def counted(rec: dict) -> bool:
    acc = rec.get("test_acc")
    finite = isinstance(acc, float) and math.isfinite(acc)
    return rec["done"] and rec.get("status") in ("ok", "diverged") and finite


def plain_best(recs: list[dict]) -> dict:
    "Per cell: (lr, mean, pstdev) of the best complete, non-diverged, non-zero LR; None when no LR qualifies."
    cells = defaultdict(lambda: defaultdict(list))
    for rec in recs:
        if rec["kind"] == "finetune":
            cell = (rec.get("model"), rec.get("opt", "sgd"), rec["dataset"], rec["train"])
            cells[cell][rec["lr"]].append(rec)
    best = {}
    for cell, lrs in cells.items():
        ok = {lr: [100 * r["test_acc"] for r in rs] for lr, rs in lrs.items()
              if all(counted(r) for r in rs) and lr > 0
              and not any(r.get("status") == "diverged" for r in rs)}
        lr = max(sorted(ok), key=lambda lr: mean(ok[lr])) if ok else None
        best[cell] = (lr, mean(ok[lr]), pstdev(ok[lr])) if ok else None
    return best


def common(best: dict, model: str, opt: str) -> list[str]:
    return [d for d in DATASETS if all(best.get((model, opt, d, c)) for c in CONFIGS)]


def test_notebook_defaults_match_the_experiment_notebooks():
    import papermill as pm
    for kind, defaults in NOTEBOOK_DEFAULTS.items():
        declared = pm.inspect_notebook(str(ROOT / "nbs" / "experiments" / f"{kind}.ipynb"))
        for k, v in defaults.items():
            assert json.loads(declared[k]["default"]) == v, (kind, k)


def test_runs_and_statuses(grid, res):
    root, runs, removed = grid
    recs = records(root, runs)
    assert len(res.runs) == len(runs) == 6 * 3 * 3 * 3 * 3 + 12 + 6 + 2
    by_id = res.runs.set_index("id")
    assert by_id.loc[removed.id, "run_status"] == "missing"
    accuracies = sum(counted(r) for r in recs if r["kind"] in ("finetune", "linear_probe"))
    assert by_id["counted"].sum() == accuracies + 8  # and 6 plasticity runs, 2 bounds runs
    assert sorted(by_id.index[by_id["status"] == "diverged"]) == sorted(r["id"] for r in recs
                                                                        if r.get("status") == "diverged")
    code = res.code.set_index("code")["runs"]
    finished = sum(r["done"] and r.get("status") != "failed" for r in recs)
    assert code["old/n0/l0"] == 3 and code.sum() == finished


def test_best_lr_matches_plain_python(grid, res):
    root, runs, _ = grid
    plain = plain_best(records(root, runs))
    assert len(res.best) == len(plain)
    for cell, want in plain.items():
        row = res.best.loc[cell]
        if want is None:
            assert np.isnan(row["test_mean"]) and row["reason"], cell
        else:
            assert (row["lr"], row["test_mean"], row["test_std"]) == pytest.approx(want), cell
    assert plain[("small", "sgd", "d1", "MHA")][0] == 0.01  # 0.1 had the best mean, but a seed diverged
    assert plain[("small", "sgd", "d2", "FC1")][0] == 0.01  # a diverged seed without an accuracy: incomplete
    assert res.best.loc[("big", "sgd", "d2", "LN1"), "lr"] > 0  # lr 0 was on top
    assert res.best.loc[("small", "adamw", "d1", "FC2"), "lr"] == 0.1  # 0.01 lost its removed seed
    # no pooling: every model keeps its own level (a 50% and a 90% model never average to 70 ± 20)
    assert res.best.xs("small", level="model")["test_mean"].max() < 75 < res.best.xs("big", level="model")[
        "test_mean"].min()
    assert res.best["test_std"].max() < 2


@pytest.fixture(scope="module")
def report(grid, tmp_path_factory):
    root, _, _ = grid
    return write_report(SPEC, root, out=tmp_path_factory.mktemp("report") / "report")


def test_best_lr_csv_and_options(grid, res, report):
    root, runs, _ = grid
    csv = pd.read_csv(report.parent / "best_lr_test.csv", index_col=[0, 1, 2, 3])
    pd.testing.assert_series_equal(csv["test_mean"], res.best["test_mean"], check_names=False)
    loose = grid_results(SPEC, root, allow_diverged=True, allow_zero_lr=True)
    assert loose.best.loc[("small", "sgd", "d1", "MHA"), "lr"] == 0.1
    assert loose.best.loc[("big", "sgd", "d2", "LN1"), "lr"] == 0.0
    assert res.best.loc[("big", "sgd", "d3", "LN1"), "reason"] == "2 of 3 seeds"
    partial = grid_results(SPEC, root, allow_incomplete=True).best
    assert partial.loc[("big", "sgd", "d3", "LN1"), ["lr", "complete"]].tolist() == [0.1, False]
    assert partial.loc[("small", "sgd", "d2", "FC1"), "lr"] == 0.01  # its seed diverged (no accuracy) at 0.1


def test_averages_gains_and_error_bars(grid, res):
    root, runs, _ = grid
    recs = records(root, runs)
    plain = plain_best(recs)
    probe = {(r["model"], r["dataset"], r["representation"]): 100 * r["test_acc"] for r in recs
             if r["kind"] == "linear_probe" and r["done"]}
    av = res.average[res.average["select"] == "test"].set_index(["model", "opt", "train"])
    gain = res.gain[res.gain["select"] == "test"].set_index(["model", "opt", "train"])
    for (model, opt) in BASE:
        ds = common(plain, model, opt)
        assert len(ds) == (2 if (model, opt) == ("big", "sgd") else 3)  # big's LN1 has no LR on d3
        for c in CONFIGS:
            accs = [plain[(model, opt, d, c)][1] for d in ds]
            stds = [plain[(model, opt, d, c)][2] for d in ds]
            row = av.loc[(model, opt, c)]
            assert row["accuracy"] == pytest.approx(mean(accs)) and row["n_datasets"] == len(ds)
            paper_bars = math.sqrt(mean(s * s for s in stds)) / math.sqrt(3)
            assert row["paper_error_bars"] == pytest.approx(paper_bars)
            assert row["pooled_se"] == pytest.approx(math.sqrt(sum(s * s / 3 for s in stds)) / len(ds))
            for rep in ("MHA", "residual"):
                got = gain.loc[(model, opt, c), f"gain_vs_probe_{rep}"]
                if all((model, d, rep) in probe for d in ds):
                    lp = [probe[(model, d, rep)] for d in ds]
                    want = mean(100 * (a - p) / p for a, p in zip(accs, lp))
                    assert got == pytest.approx(want)
                else:
                    assert np.isnan(got)


def test_lr_gap_and_ablation(grid, res):
    root, runs, _ = grid
    recs = records(root, runs)
    cells = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["kind"] == "finetune":
            cells[(r["model"], r["opt"], r["dataset"], r["train"])][r["lr"]].append(r)
    gaps = {}
    for cell, lrs in cells.items():
        if all(counted(r) for rs in lrs.values() for r in rs):
            means = [mean(100 * r["test_acc"] for r in rs) for rs in lrs.values()]
            gaps[cell] = max(means) - min(means)
    gap = res.lr_gap.set_index(["model", "opt", "train"])
    for (model, opt) in BASE:
        ds = [d for d in DATASETS if all((model, opt, d, c) in gaps for c in CONFIGS)]
        for c in CONFIGS:
            want = mean(gaps[(model, opt, d, c)] for d in ds)
            assert gap.loc[(model, opt, c), "lr_gap"] == pytest.approx(want)
    ab = res.ablation.set_index(["model", "opt", "dataset", "train"])
    for cell, lrs in cells.items():
        first = [100 * r["test_acc"] for rs in lrs.values() for r in rs if r["seed"] == 0 and counted(r)]
        assert ab.loc[cell, ["test_mean", "test_std"]].tolist() == pytest.approx([mean(first), pstdev(first)])
        assert ab.loc[cell, "complete"] == (len(first) == len(LRS))


def plain_plasticity(root: Path, runs, model: str, protocol: str) -> dict:
    "Per dataset and component: median over layers of the per-layer means, from the layers.csv files."
    out = {}
    for r in runs:
        if r.kind == "plasticity" and r.params["model"] == model:
            t = pd.read_csv(root / r.id / "layers.csv")
            t = t[t["protocol"] == protocol]
            medians = {c: median(t.loc[t["component"] == c, "mean"]) for c in COMPONENT_ORDER}
            out[r.params["dataset"]] = medians
    return out


def test_headline_is_per_model(grid, res):
    root, runs, _ = grid
    plain = plain_best(records(root, runs))
    h = res.headline.set_index(["model", "opt", "component"])
    for model in ("small", "big"):
        pooled = []
        for r in runs:
            if r.kind == "plasticity" and r.params["model"] == model:
                t = pd.read_csv(root / r.id / "layers.csv")
                pooled += t.loc[(t["protocol"] == "paper") & (t["component"] == "MHA"), "mean"].tolist()
        assert h.loc[(model, "sgd", "MHA"), "plasticity"] == pytest.approx(median(pooled))
    ds = common(plain, "small", "adamw")
    want = mean(plain[("small", "adamw", d, "LN1")][1] for d in ds)
    assert h.loc[("small", "adamw", "LN1"), "accuracy"] == pytest.approx(want)
    text = summary_text(Path(res.meta["root"]) / "missing-report")
    assert text.startswith("no report")


def brute_force_mean_rho(x: list[list[float]], y: list[list[float]]) -> tuple[float, float]:
    "Mean over datasets of Spearman's rho and its exact one-sided p, enumerating every ordering in a dataset."
    per = []
    for a, b in zip(x, y):
        orders = itertools.permutations(range(len(b)))
        per.append([sst.spearmanr(a, [b[i] for i in perm]).statistic for perm in orders])
    observed = sum(sst.spearmanr(a, b).statistic for a, b in zip(x, y))
    sums = sum(np.meshgrid(*per, indexing="ij")).ravel()
    return observed / len(x), float(np.mean(sums >= observed - 1e-9))


def test_within_dataset_statistics(grid, res):
    root, runs, _ = grid
    plain = plain_best(records(root, runs))
    trend = res.trend.set_index(["model", "opt", "protocol", "set"])
    assert len(trend) == 3 * 2 * 2  # (model, opt) × protocol × component set
    sets = [("all", COMPONENT_ORDER), ("matched", MATCHED)]
    for (model, opt), protocol, (name, comps) in itertools.product(BASE, ("paper", "in_situ"), sets):
        plast = plain_plasticity(root, runs, model, protocol)
        ds = [d for d in DATASETS if all(plain.get((model, opt, d, c)) for c in comps)]
        x = [[plast[d][c] for c in comps] for d in ds]
        y = [[plain[(model, opt, d, c)][1] for c in comps] for d in ds]
        row = trend.loc[(model, opt, protocol, name)]
        assert row["n_datasets"] == len(ds) and row["method"] == "exact"
        assert (row["mean_rho"], row["p"]) == pytest.approx(brute_force_mean_rho(x, y))
        if len(ds) >= 2:
            order = np.argsort(np.median(x, axis=0))  # least plastic first
            page = sst.page_trend_test(np.array(y)[:, order])
            assert (row["page_L"], row["page_p"]) == pytest.approx((page.statistic, page.pvalue))


def test_paired_tests_need_six_datasets_and_reproduce_the_paper():
    paper = paper_main_table()
    comps = list(COMPONENT_ORDER)
    assert paper[comps + ["full"]].mean().round(2).tolist() == [90.75, 90.68, 90.31, 89.93, 89.82, 90.85]
    gains = relative_gain(paper[comps], paper["linear_probe_v1"]).round(2).tolist()
    assert gains == [53.44, 53.27, 52.70, 51.27, 51.17]
    pt = paired_tests(paper)
    assert pt["t_test_p"].tolist() == pytest.approx([0.43, 0.004, 0.075, 0.024], abs=0.006)
    assert pt["wilcoxon_p"].tolist() == pytest.approx([0.375, 0.005, 0.021, 0.0015], abs=0.0006)
    std = paper_main_table("test_acc_std")
    assert paper_error_bars(std[comps])["MHA"] == pytest.approx(
        math.sqrt(sum(v * v for v in std["MHA"]) / 11) / math.sqrt(3))
    best = paper[comps].stack().rename("test_mean").rename_axis(["dataset", "train"]).reset_index()
    best = best.assign(model="vit-b16", opt="sgd").set_index(["model", "opt", "dataset", "train"])
    for n, ran in [(11, True), (6, True), (5, False)]:
        keep = best.index.get_level_values("dataset").isin(paper.index[:n])
        table = paired_table(best[keep]).set_index("other")
        assert table["n_datasets"].eq(n).all() and table["wilcoxon_p"].notna().all() == ran
        if ran:
            acc = paper.loc[paper.index[:n]]
            assert table.loc["LN1", "wilcoxon_p"] == pytest.approx(
                sst.wilcoxon(acc["MHA"], acc["LN1"], alternative="greater").pvalue)


def test_bounds_check_and_provenance_in_the_report(grid, res, report):
    root, runs, _ = grid
    check = res.bounds_check
    assert set(check["bounds_of"]) == {"model"}
    assert len(check) == 2 * 3 * 5 * 4 * 2  # models, datasets, components, layers, variants: paper protocol
    for model in ("small", "big"):
        bound = {"MHA": 60.0, "FC1": 24.0, "FC2": 15.0, "LN2": 4.5, "LN1": 3.6}
        tables = [pd.read_csv(root / r.id / "layers.csv") for r in runs
                  if r.kind == "plasticity" and r.params["model"] == model]
        holds = [row["mean"] <= bound[row["component"]]
                 for t in tables for _, row in t.iterrows() if row["protocol"] == "paper"]
        assert check.loc[check["model"] == model, "holds"].sum() == 2 * sum(holds)  # both variants alike
    text = report.read_text()
    assert "**Warning: these results mix 2 code versions**" in text
    assert "RuntimeError: CUDA out of memory" in text and "Diverged runs" in text
    assert "Paired tests are not run for **small** (adamw): 3 dataset(s)" in text
    assert "Runs planned: 506; done: 501, failed: 3, missing: 2." in text


def test_rehearsal_label_on_every_figure(res):
    from dataclasses import replace
    import matplotlib.pyplot as plt
    rehearsal = replace(res, meta={**res.meta, "label": "REHEARSAL synthetic"})
    items = [it for items in report_sections(rehearsal).values() for it in items]
    figures = [it for it in items if isinstance(it, FigureItem)]
    assert len(figures) >= 10
    for it in figures:
        fig = it.draw()
        assert fig._suptitle.get_text().startswith("REHEARSAL synthetic"), it.name
        titles = " ".join([fig._suptitle.get_text()] + [ax.get_title() for ax in fig.axes])
        assert "small" in titles or "big" in titles, it.name  # the model is named
        plt.close(fig)


def test_report_rebuilt_and_nothing_to_report(grid, tmp_path):
    root, runs, _ = grid
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    out = tmp_path / "report"
    report = write_report(SPEC, copy, out=out)
    assert load_results(out).headline.equals(grid_results(SPEC, copy).headline)
    assert "small (sgd), per component" in summary_text(out) and "big (sgd)" in summary_text(out)
    (out / "stale.png").write_bytes(b"old")
    for r in runs:
        shutil.rmtree(copy / r.id, ignore_errors=True)
    text = write_report(SPEC, copy, out=out).read_text()
    assert "Nothing to report" in text and "## Headline" not in text and not (out / "stale.png").exists()
    assert not (out / "headline.csv").exists() and not list(out.glob("*.png"))
    assert summary_text(out).endswith("Nothing to report: no planned run has finished.")
    assert report == out / "report.md" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

def test_bar_figures_leave_out_infinite_values():
    "A gain over a probe at 0% is infinite (the whole rehearsal's DomainNet probes): the figure is still drawn."
    from vit_plasticity.analysis import plot_bars
    t = pd.DataFrame(dict(model="m", opt="sgd", train=["MHA", "FC1"], gain=[float("inf"), 5.0]))
    fig = plot_bars(t, "gain", "gain (%)", "gains")  # raised "Axis limits cannot be NaN or Inf"
    assert [p.get_height() for p in fig.axes[0].patches] == [5.0]
