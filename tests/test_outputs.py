"""Notebook outputs are part of the paper: committed, and what re-running the notebook gives.

(a) every library notebook carries outputs (unless exempt below, with its reason);
(b) a few cheap, deterministic notebooks are executed again and their text outputs compared with the committed
    ones (images, tqdm progress, timings, memory addresses and temporary paths ignored).
"""
import copy, json, os, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
LIB_NBS = sorted(NBS.glob("[0-9][0-9]*_*.ipynb"))

# notebook name -> why it is committed without outputs
EXEMPT: dict[str, str] = {
    "00_files": "machinery: atomic writes, checked by asserts that print nothing (crashes are tested in tests/)",
    "03_runs": "machinery: run folders and their code version, checked by asserts that print nothing",
}

# cheap notebooks whose text outputs are deterministic: executed again and compared (extend as notebooks
# qualify; the whole file should stay under about a minute on 2 busy cores)
REPLAYED = ["22a_cost"]


def code_cells(nb: dict) -> list[dict]: return [c for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", LIB_NBS, ids=lambda p: p.name)
def test_library_notebook_has_outputs(path):
    if path.stem in EXEMPT:
        pytest.skip(EXEMPT[path.stem])
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert any(c.get("outputs") for c in code_cells(nb)), (
        f"{path.name} is committed without outputs: execute it top to bottom (jupyter nbconvert --execute "
        "--inplace), run nbdev_clean, and commit it; or add it to EXEMPT with the reason")


_TQDM = re.compile(r"\d+%\|.*\||\d+/\d+ \[[\d:<>, .?a-z/]*\]|it/s\]")  # a progress bar's line
_NOISE = [(re.compile(r"0x[0-9a-fA-F]{6,}"), "0x…"),  # memory addresses
          (re.compile(r"/tmp/[\w./-]+"), "<tmp>"),  # temporary folders
          (re.compile(r"\b\d+(\.\d+)?\s?(ms|µs|us|s|sec|seconds|min)\b"), "<time>")]  # timings


def normalise(text: str) -> str:
    "Text output without progress bars, warnings (paths of the machine), timings, addresses, temp paths."
    lines = []
    for line in text.replace("\r", "\n").splitlines():
        if _TQDM.search(line) or re.search(r"Warning: |^\s*warnings\.warn\(", line):
            continue
        for pat, sub in _NOISE:
            line = pat.sub(sub, line)
        lines.append(line.rstrip())
    return "\n".join(l for l in lines if l)


def text_outputs(cell: dict) -> list[str]:
    "The normalised text of a code cell's outputs: streams and text/plain results; images ignored."
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append(f"{o['name']}: " + normalise("".join(o["text"])))
        elif o["output_type"] in ("execute_result", "display_data") and "text/plain" in o.get("data", {}):
            if not any(k.startswith("image/") for k in o["data"]):  # a figure's repr names its address
                out.append("result: " + normalise("".join(o["data"]["text/plain"])))
        elif o["output_type"] == "error":
            out.append(f"error: {o['ename']}")
    return [t for t in out if not t.endswith(": ")]


def differences(committed: dict, executed: dict) -> list[str]:
    "Per code cell, where the executed notebook's text outputs are not the committed ones."
    a, b = code_cells(committed), code_cells(executed)
    assert len(a) == len(b), "the notebooks have different code cells"
    diffs = []
    for i, (x, y) in enumerate(zip(a, b)):
        if text_outputs(x) != text_outputs(y):
            src = "".join(x["source"]).splitlines()[:1]
            diffs.append(f"code cell {i} {src}:\n  committed {text_outputs(x)}\n"
                         f"  re-run    {text_outputs(y)}")
    return diffs


def test_differences_catch_a_tampered_output():
    "The comparison can fail: a number changed by hand is caught; progress bars and timings are not."
    nb = json.loads((NBS / f"{REPLAYED[0]}.ipynb").read_text(encoding="utf-8"))
    cell = next(c for c in code_cells(nb) if any("text/plain" in o.get("data", {}) for o in c["outputs"]))
    out = next(o for o in cell["outputs"] if "text/plain" in o.get("data", {}))
    tampered = copy.deepcopy(nb)
    t_out = next(o for o in next(c for c in code_cells(tampered) if c["source"] == cell["source"])["outputs"]
                 if "text/plain" in o.get("data", {}))
    text = "".join(out["data"]["text/plain"])
    t_out["data"]["text/plain"] = [re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), text, count=1)]
    assert differences(nb, tampered)
    noisy = copy.deepcopy(nb)
    code_cells(noisy)[0].setdefault("outputs", []).append(
        {"output_type": "stream", "name": "stderr",
         "text": ["100%|██████| 10/10 [00:01<00:00, 9.1it/s]\n"]})
    assert not differences(nb, noisy)
    got = normalise("took 3.2 s at 0x7f3a2b1c9d00 in /tmp/tmpab12/x")
    assert got == "took <time> at 0x… in <tmp>", got


@pytest.mark.parametrize("name", REPLAYED)
def test_outputs_are_what_rerunning_gives(name, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = NBS / f"{name}.ipynb"
    committed = nbformat.read(path, as_version=4)
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))  # the kernel imports this checkout's library
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    executed = copy.deepcopy(committed)
    nbclient.NotebookClient(executed, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NBS)}}).execute()
    diffs = differences(json.loads(nbformat.writes(committed)), json.loads(nbformat.writes(executed)))
    why = f"{name}: the committed outputs differ from a re-run (execute it, commit it):\n"
    assert not diffs, why + "\n".join(diffs)
