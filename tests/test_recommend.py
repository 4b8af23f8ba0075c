"""`vitp plasticity` and `vitp recommend` as a user runs them (a console script, a folder of PNG files), and
what the recommend notebook leaves to pytest: interval coverage on synthetic ratios, another family's patterns."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
from PIL import Image

from vit_plasticity.cli import main
from vit_plasticity.components import COMPONENTS, set_trainable
from vit_plasticity.data import digits_images
from vit_plasticity.recommend import component_patterns, plasticity_ranks

VITP = str(Path(sys.executable).parent / "vitp")
ROW = re.compile(r"^\s+(\d)\s+(LN1|MHA|LN2|FC1|FC2)\s+(\S+)\s+\[(\S+), (\S+)\]$", re.M)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    "200 handwritten digits as 32x32 grey PNG files, flat: a user's folder of images."
    folder = tmp_path_factory.mktemp("digits")
    x, _ = digits_images()
    for i in range(200): Image.fromarray(x[i]).save(folder / f"{i:03d}.png")
    return folder


def vitp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([VITP, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_recommend_prints_a_ranking_with_intervals_and_writes_its_files(digits, tmp_path):
    out = vitp("recommend", "tiny-fmnist", "--target", str(digits), "--n-pairs", "128", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = ROW.findall(out.stdout)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert sorted(r[1] for r in rows) == sorted(COMPONENTS[1:])
    assert all(float(lo) <= float(v) <= float(hi) for _, _, v, lo, hi in rows)
    table = pd.read_csv(tmp_path / "vitp-recommend" / "ranking.csv")
    paper = table[table.protocol == "paper"]
    assert list(paper.component) == [r[1] for r in rows]  # what is printed is what is written
    np.testing.assert_allclose(paper.plasticity, [float(r[2]) for r in rows], rtol=1e-3)
    assert f"Recommendation: finetune {rows[0][1]} (with the head)." in out.stdout
    assert (tmp_path / "vitp-recommend" / "ranking.png").stat().st_size > 10_000
    assert set(pd.read_csv(tmp_path / "vitp-recommend" / "layers.csv").protocol) == {"paper", "in_situ"}


def test_plasticity_one_protocol_to_a_chosen_folder(digits, tmp_path):
    out = vitp("plasticity", "tiny-fmnist", "--target", str(digits), "--source", "fmnist", "--n-pairs", "64",
               "--batch-size", "32", "--protocol", "in_situ", "--no-compare", "--out", "ranked", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Recommendation" not in out.stdout and "in_situ protocol, 64 pairs" in out.stdout
    assert set(pd.read_csv(tmp_path / "ranked" / "ranking.csv").protocol) == {"in_situ"}


@pytest.mark.parametrize("args, says", [
    (["recommend", "deit_tiny_patch16_224", "--target", "DIGITS"], "pass source="),
    (["recommend", "tiny-fmnist", "--target", "/no/such/folder"], "neither an image folder nor a dataset"),
    (["plasticity", "nothing", "--target", "DIGITS", "--source", "fmnist"], "unknown model 'nothing'"),
    (["plasticity", "tiny-fmnist", "--target", "DIGITS", "--batch-size", "512"], "fewer than batch_size=512"),
])
def test_refused_with_the_reason(digits, tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)  # in-process: the console script's path is tested above
    assert main([str(digits) if a == "DIGITS" else a for a in args]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "vitp-recommend").exists() and not (tmp_path / "vitp-plasticity").exists()


def test_help_imports_nothing_heavy():
    code = "import sys; from vit_plasticity.cli import parser; parser().format_help(); " \
           "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'timm', 'papermill') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def synthetic(n_pairs: int, seed: int = 0) -> pd.DataFrame:
    "Ratios of 5 components in 4 layers: per-layer means 1..5 times the layer's factor, noise on each pair."
    rng, rows = np.random.default_rng(seed), []
    for k, comp in enumerate(COMPONENTS[1:]):
        for layer, f in enumerate((0.8, 0.9, 1.1, 1.2)):
            r = (k + 1) * f + rng.normal(0, 0.5, n_pairs)
            rows.append(pd.DataFrame(dict(pair=range(n_pairs), layer=layer, component=comp, ratio=r)))
    return pd.concat(rows).assign(protocol="paper")


def test_intervals_cover_the_truth_and_shrink_with_more_pairs():
    truth = {c: (k + 1) * 1.0 for k, c in enumerate(COMPONENTS[1:])}  # the median of the layer factors is 1.0
    covered = []
    for seed in range(20):
        t = plasticity_ranks(synthetic(100, seed), n_boot=300, seed=seed).set_index("component")
        covered += [t.low[c] <= truth[c] <= t.high[c] for c in truth]
    assert 0.85 <= np.mean(covered) <= 1.0, np.mean(covered)  # nominal 95 %
    width = lambda n: (lambda t: (t.high - t.low).mean())(plasticity_ranks(synthetic(n), n_boot=300))
    assert width(400) < 0.65 * width(100)  # ~1/sqrt(n): half as wide with four times the pairs
    t = plasticity_ranks(synthetic(100))
    assert list(t.component) == ["FC2", "FC1", "LN2", "MHA", "LN1"] and list(t["rank"]) == [1, 2, 3, 4, 5]


def test_patterns_select_what_set_trainable_trains_on_a_distilled_deit():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=2)  # + dist token
    for comp in [*COMPONENTS, "head"]:
        set_trainable(model, comp, train_head=comp == "head")
        pats = component_patterns(model, comp)
        chosen = {n for n, _ in model.named_parameters()
                  if any(re.fullmatch(p, n.rpartition(".")[0] or n) for p in pats)}
        assert chosen == {n for n, p in model.named_parameters() if p.requires_grad}, comp
    assert "head_dist" in component_patterns(model, "head", linear_only=True)
