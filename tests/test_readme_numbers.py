"""The README's headline numbers are the committed reports': every cell of their tables, from the CSVs."""
import math, re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
COLUMNS = {"plasticity (paper)": ("plasticity_components", "paper"),
           "plasticity (in situ)": ("plasticity_components", "in_situ"),
           "accuracy %, LR by test": ("average_accuracy", "test"),
           "accuracy %, LR by validation": ("average_accuracy", "valid"),
           "gain over probe %": ("gains", "test"), "LR gap (points)": ("lr_gap", None)}

def stated_reports() -> list[str]:
    "The grids whose reports the README's headline tables come from (runs/GRID/report/headline.csv)."
    return list(dict.fromkeys(re.findall(r"runs/(\w+)/report/headline\.csv", README)))

def has_report(grid: str) -> bool: return (ROOT / "runs" / grid / "report" / "headline.csv").is_file()

def test_readme_shows_a_table_exactly_when_its_report_is_committed():
    assert stated_reports()[:2] == ["demo", "study"], stated_reports()
    for grid in stated_reports():
        pending = f"No report is committed yet (`runs/{grid}/report/headline.csv`)" in README
        assert pending != has_report(grid), f"README and runs/{grid}/report disagree: run `make readme`"

def readme_tables() -> list[tuple[str, pd.DataFrame]]:
    "The README's headline tables, each with the grid whose committed report it says it comes from."
    grids = [g for g in stated_reports() if has_report(g)]
    if not grids: pytest.skip("no report committed yet: the README says so (test above)")
    lines = README.splitlines()
    starts = [i for i, l in enumerate(lines) if l.startswith("| component | plasticity (paper)")]
    assert len(starts) == len(grids), f"{len(starts)} headline tables for the committed reports {grids}"
    tables = []
    for grid, start in zip(grids, starts):
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        rows = [l.strip("|").split("|") for l in lines[start:end]][2:]  # this table only: header, rule, rows
        header = [h.strip() for h in lines[start].strip("|").split("|")]
        tables.append((grid, pd.DataFrame([[c.strip() for c in r] for r in rows], columns=header)
                       .set_index("component")))
    return tables

def committed(report: str, column: str, component: str) -> float:
    "The value of one README cell, read from the committed CSVs."
    name, key = COLUMNS[column]
    df = pd.read_csv(ROOT / "runs" / report / "report" / f"{name}.csv")
    if name == "plasticity_components":
        hit = df.query("dataset == 'all' and protocol == @key and component == @component")["median"]
    elif name == "lr_gap": hit = df.query("train == @component")["lr_gap"]
    elif name == "gains": hit = df.query("select == @key and train == @component")["gain_vs_probe_residual"]
    else: hit = df.query("select == @key and train == @component")["accuracy"]
    return float(hit.iloc[0]) if len(hit) else math.nan

def test_readme_headline_tables_are_the_committed_reports():
    for report, table in readme_tables():
        checked = 0
        for comp, row in table.iterrows():
            for column, cell in row.items():
                want = committed(report, column, comp)
                where = f"{report}: {comp}/{column}"
                if cell == "": assert math.isnan(want), f"{where}: README empty, report {want}"
                else:
                    assert float(cell.replace("−", "-")) == pytest.approx(want, abs=0.005), where
                    checked += 1
        assert checked >= 20, f"the README's {report} table is nearly empty"

def test_readme_states_the_permutation_p_values_of_the_reports():
    trends = [pd.read_csv(ROOT / "runs" / report / "report" / "plasticity_trend.csv")
              for report, _ in readme_tables()]
    trend = pd.concat(trends).dropna(subset=["p"])
    stated = re.findall(r"ρ = ([+−-]?\d\.\d\d) over (\d+) dataset\(s\), permutation p = ([\d.e-]+)", README)
    assert len(stated) == len(trend) > 0
    for (rho, n, p), (_, r) in zip(stated, trend.iterrows()):
        assert float(rho.replace("−", "-")) == pytest.approx(r["mean_rho"], abs=0.005)
        assert int(n) == r["n_datasets"]
        assert float(p) == pytest.approx(r["p"], rel=5e-3, abs=5e-4)  # printed to 3 significant digits


def test_readme_states_the_paired_tests_of_the_reports_and_the_paper():
    "Each 'p = a / b / c / d here, e / f / g / h from the paper's table' is the report's CSV and the paper's."
    from vit_plasticity.stats import paired_tests, paper_main_table
    said = r"over (\d+) targets: p = ([\d.e/ -]+?) here, ([\d.e/ -]+?) from the paper's table"
    stated = re.findall(said, " ".join(README.split()))
    csv = lambda grid: pd.read_csv(ROOT / "runs" / grid / "report" / "paired_tests.csv")
    tables = [csv(grid) for grid, _ in readme_tables()]
    tested = [t for t in tables if len(t) and t["wilcoxon_p"].notna().all()]
    assert len(stated) == len(tested), "the README states the paired tests of every report that has them"
    paper = paired_tests(paper_main_table())["wilcoxon_p"]
    for (n, ours, theirs), t in zip(stated, tested):
        assert int(n) == t["n_datasets"].iloc[0]
        values = lambda said: [float(v) for v in said.split(" / ")]
        assert values(ours) == pytest.approx(list(t["wilcoxon_p"]), rel=5e-3)  # 3 significant digits
        assert values(theirs) == pytest.approx(list(paper[t["other"]]), rel=5e-3)


def test_the_readme_run_counts_are_the_grid_files():
    "Every '`grid` (N)' and the demo's 'N runs' in the README is the number of runs its grid file expands to."
    from vit_plasticity.grid import expand, load_spec
    stated = dict(re.findall(r"`([\w-]+)` \((\d[\d,]*)\)", README))
    stated["demo"] = re.search(r"make demo .*?(\d+) runs", README).group(1)
    stated["paper"] = re.search(r"`paper` \((\d[\d,]*)\s", README).group(1)
    assert {"paper", "ablation-adamw", "ablation-size", "study", "demo", "smoke"} <= set(stated), stated
    for grid in ("paper", "ablation-adamw", "ablation-size", "study", "demo", "smoke"):
        assert int(stated[grid].replace(",", "")) == len(expand(load_spec(grid))), grid


# (what the README's Performance paragraph says, the committed file it comes from, what that file must hold)
PERFORMANCE_SOURCES = [
    ("to 2e-7", "benchmarks/RESULTS.md",
     r"\| 1a plasticity: estimator = naive oracle \|[^|]*\| 1\.\d+e-07 \|"),
    ("1.9× faster", "benchmarks/RESULTS.md",
     r"\| 1b plasticity: speed-up over naive \(ViT-B/16\) \|[^|]*\| 1\.9\d* \|"),
    ("one fifth of its peak memory", "benchmarks/RESULTS.md",
     r"\| 1c plasticity: peak memory[^|]*\|[^|]*\| 0\.19\d \|"),
    ("0.69× and 0.80×", "benchmarks/RESULTS.md",
     r"LN1-only 0\.69 and MHA-only 0\.80"),
    ("about 1.5 s", "benchmarks/RESULTS.md",
     r"\| 5b grid: papermill overhead per run, warm kernel \|[^|]*\| 1\.[45]\d* \|"),
    ("against 18 s", "benchmarks/RESULTS.md",
     r"\| 5a grid: papermill overhead per run, fresh kernel \|[^|]*\| 18\.\d+ \|"),
    ("21.7% of the two workers'", "benchmarks/RESULTS.md",
     r"\*\*21\.7%\*\* of the workers'\s+time"),
    ("to 3e-4 relative", "benchmarks/RESULTS.md",
     r"\| 6c plasticity: bf16 vs fp32[^|]*\|[^|]*\| 2\.\d+e-04 \|"),
    ("0.21× on an AVX2-only", "benchmarks/RESULTS.md",
     r"\| 6b plasticity: bf16 estimator speed / fp32 \|[^|]*\| 0\.21\d \|"),
    ("0.79× the", "benchmarks/RESULTS.md",
     r"\| 8  memory: whole-process peak[^|]*\|[^|]*\| 0\.79\d* \|"),
    ("takes 782 MiB", "benchmarks/RESULTS.md",
     r"the imports alone: 782 MiB"),
    ("starts in 0.67 s", "benchmarks/RESULTS.md",
     r"\| 9  start-up: vitp --help \| 0\.67 s"),
    ("in 1.2 s", "benchmarks/RESULTS.md",
     r"\| 9  start-up: vitp grid status paper \| 1\.20 s"),
    ("about 290 H100-hours", "nbs/22a_cost.ipynb",  # the replayed plan's total
     r"\b2(8[5-9]|9[0-4])\.\d"),
    ("took 18 minutes", "vit_plasticity/grids/demo.yaml",  # the demo's own cost record
     r"18 min = 3 min\s+#?\s*installing the environment \+ 14 min 14 s of runs"),
    ("took 3 h 51 min of runs", "vit_plasticity/grids/study.yaml",  # the study's own cost record
     r"1 h 41 min 38 s and 2 h 9 min 37 s = 3 h 51 min of runs"),
    ("against 4,280 in fp32", "nbs/22a_cost.ipynb",
     r"\b42(7[5-9]|8[0-4])\.\d"),
]

@pytest.mark.parametrize("said, source, pattern", PERFORMANCE_SOURCES,
                         ids=[c[0] for c in PERFORMANCE_SOURCES])
def test_the_readme_performance_numbers_are_the_committed_records(said, source, pattern):
    "Each number of the README's Performance paragraph (and the demo's cost) is in the record it comes from."
    assert said in " ".join(README.split()), f"the README no longer says {said!r}: update this list"
    assert re.search(pattern, (ROOT / source).read_text(encoding="utf-8")), f"{source} does not hold {said!r}"
