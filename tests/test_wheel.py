"""The package as a user outside a checkout gets it: the wheel is built (offline, no build isolation),
installed into a fresh virtual environment, and `vitp` runs the smoke grid and its report in an empty folder.

To stay fast, the fresh environment reuses this environment's third-party packages through a path file (a
`.pth` line puts their folder on sys.path without running the `.pth` files in it, so this checkout's editable
install is not activated); vit_plasticity itself comes from the wheel, which the test proves."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from configparser import ConfigParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CFG = ConfigParser(delimiters=["="])
CFG.read(ROOT / "settings.ini")


def _copy_sources(dest: Path) -> Path:
    "What setup.py builds from: settings, README, the package, the notebooks the wheel carries."
    for f in ("settings.ini", "setup.py", "README.md"): shutil.copy(ROOT / f, dest / f)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "vit_plasticity", dest / "vit_plasticity", ignore=skip)
    (dest / "nbs").mkdir()
    shutil.copytree(ROOT / "nbs" / "experiments", dest / "nbs" / "experiments")
    shutil.copy(ROOT / "nbs" / "results.ipynb", dest / "nbs" / "results.ipynb")
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, dist = _copy_sources(tmp_path_factory.mktemp("src")), tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index"]
    out = subprocess.run([*pip, "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return next(dist.glob("vit_plasticity-*.whl"))


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory) -> Path:
    "A fresh venv holding the wheel; third-party packages seen through a path file to this venv's."
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(home)
    py = home / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "shared_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return home


def _env(**extra) -> dict:
    "A clean environment: no PYTHONPATH (which would put this checkout first), one thread."
    keep = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VITP_RUNS", "VITP_NOTEBOOKS")}
    return {**keep, "OMP_NUM_THREADS": "1", **extra}


def test_wheel_carries_the_notebooks_and_declares_the_extras(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    prefix = "vit_plasticity/notebooks/"
    shipped = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    want = {f"experiments/{p.name}" for p in (ROOT / "nbs" / "experiments").glob("*.ipynb")}
    want.add("results.ipynb")
    assert shipped == want  # exactly these: no library notebook, no image
    for nb in want:  # copied at build time: the same bytes as nbs/, never a stale copy
        assert zipfile.ZipFile(wheel).read(prefix + nb) == (ROOT / "nbs" / nb).read_bytes()
    assert {f"vit_plasticity/{f}" for f in ("assets/tiny_vit_fmnist.safetensors", "grids/smoke.yaml")} <= set(names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    extras = {l.split(":", 1)[1].strip() for l in meta.splitlines() if l.startswith("Provides-Extra:")}
    assert {"demo", "slurm", "hf", "lab", "dev", "all"} <= extras
    assert "Requires-Dist: timm<2,>=1.0.9" in meta or "Requires-Dist: timm>=1.0.9,<2" in meta


def test_installed_package_runs_the_smoke_grid_from_an_empty_folder(env, tmp_path):
    py, vitp = env / "bin" / "python", env / "bin" / "vitp"
    where = subprocess.run([str(py), "-c", "import vit_plasticity, vit_plasticity.grid as g; "
                            "print(vit_plasticity.__file__); print(g.notebooks_dir())"],
                           capture_output=True, text=True, cwd=tmp_path, env=_env())
    module, notebooks = where.stdout.split()
    assert Path(module).is_relative_to(env), where.stdout  # the wheel's package, not this checkout's
    assert Path(notebooks).is_relative_to(env), where.stdout  # and the wheel's notebooks
    version = subprocess.run([str(vitp), "--version"], capture_output=True, text=True, env=_env())
    assert version.stdout.strip() == f"vitp {CFG['DEFAULT']['version']}", version
    work = tmp_path / "empty"
    work.mkdir()
    run = subprocess.run([str(vitp), "grid", "run", "smoke", "--jobs", "2"], capture_output=True, text=True,
                         cwd=work, env=_env(), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    runs = [d for d in (work / "runs" / "smoke").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(runs) == 5 and all((d / "DONE").is_file() for d in runs), sorted(p.name for p in runs)
    status = subprocess.run([str(vitp), "grid", "status", "smoke"], capture_output=True, text=True, cwd=work,
                            env=_env())
    assert (status.returncode, status.stdout.split()) == (0, ["done", "5"]), status
    report = subprocess.run([str(vitp), "report", "smoke"], capture_output=True, text=True, cwd=work,
                            env=_env(), timeout=600)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert (work / "runs" / "smoke" / "report" / "report.md").is_file()
    assert (work / "runs" / "smoke" / "report" / "results.ipynb").is_file()


def test_pretrain_writes_to_the_current_folder_when_installed(env, tmp_path):
    py = env / "bin" / "python"
    code = "from vit_plasticity.tiny_vit import pretrain_out; print(pretrain_out())"
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert Path(out.stdout.strip()) == tmp_path / "tiny_vit_fmnist.safetensors", out


def _declared() -> set[str]:
    "The distributions settings.ini declares: the requirements and every extra but dev."
    import shlex
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    d = CFG["DEFAULT"]
    keys = [k for k in d if k.endswith("requirements") and k != "dev_requirements"]
    return {canonicalize_name(Requirement(r).name) for k in keys for r in shlex.split(d[k])}


def _imported(code: str) -> set[str]:
    "The top-level modules that `code` imports (absolute imports only)."
    import ast
    out = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import): out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0: out.add(node.module.split(".")[0])
    return out


def test_every_third_party_import_is_declared():
    "The package's modules and the notebooks it ships import nothing that settings.ini does not declare."
    from importlib.metadata import packages_distributions
    from packaging.utils import canonicalize_name
    code = [f.read_text() for f in (ROOT / "vit_plasticity").glob("*.py")]
    for nb in [*(ROOT / "nbs" / "experiments").glob("*.ipynb"), ROOT / "nbs" / "results.ipynb"]:
        cells = json.loads(nb.read_text())["cells"]
        code += ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and "%" not in "".join(c["source"])]
    modules = set().union(*map(_imported, code)) - set(sys.stdlib_module_names) - {"vit_plasticity"}
    dists, declared = packages_distributions(), _declared()
    undeclared = {m for m in modules if not {canonicalize_name(d) for d in dists.get(m, [m])} & declared}
    assert not undeclared, f"imported but not in settings.ini: {sorted(undeclared)}"


def test_constraints_pin_every_declared_package():
    from packaging.utils import canonicalize_name
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = {canonicalize_name(l.split("==")[0]) for l in lines if "==" in l and not l.startswith("#")}
    assert not {"torch", "torchvision"} & pins  # the machine's pip constraints choose that build
    assert _declared() - {"torch", "torchvision"} <= pins, "run `make constraints`"
