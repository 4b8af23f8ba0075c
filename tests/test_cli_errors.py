"""The joints a new user meets first, through the `vitp` command: bad grid files, Ctrl-C, corrupt run folders and
unwritable report folders each give one named error (never a traceback), and the grid or report goes on."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest
import yaml

from vit_plasticity.cli import main
from vit_plasticity.grid import expand
from vit_plasticity.runs import run_status

LAUNCH = "import sys; from vit_plasticity.cli import main; sys.exit(main(sys.argv[1:]))"


def refused(capsys, *argv) -> str:
    "Run `vitp argv`: it must refuse with exit status 2 and one line on stderr, no traceback; that line."
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("vitp: "), err
    return err


def test_grid_files_that_are_folders_not_utf8_or_with_duplicate_keys(tmp_path, capsys):
    (tmp_path / "x.yaml").mkdir()
    assert "is a folder, not a grid file" in refused(capsys, "grid", "run", tmp_path / "x.yaml", "--dry-run")
    spec = "name: u16\nblocks:\n  - kind: finetune\n"
    (tmp_path / "u16.yaml").write_bytes(spec.encode("utf-16"))
    assert "is not UTF-8 text" in refused(capsys, "grid", "run", tmp_path / "u16.yaml", "--dry-run")
    (tmp_path / "dup.yaml").write_text("name: dup\nname: other\nblocks:\n  - kind: finetune\n")
    assert "given twice" in refused(capsys, "grid", "status", tmp_path / "dup.yaml")


def test_nonsense_values_and_unsupported_models_are_refused_before_any_run(tmp_path, capsys):
    bad = {"name": "bad", "defaults": {"model": "tiny-fmnist", "dataset": "digits"},
           "blocks": [{"kind": "finetune", "params": {"batch_size": 0}}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert "batch_size=0 must be at least 1" in refused(capsys, "grid", "run", tmp_path / "bad.yaml",
                                                        "--root", tmp_path / "runs")
    bad["blocks"] = [{"kind": "finetune", "params": {"model": "resnet18"}}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert "is not a ViT this library can map" in refused(capsys, "grid", "run", tmp_path / "bad.yaml",
                                                          "--root", tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


SLEEPY = """import time
from vit_plasticity.runs import finish_run, start_run
d = start_run(run_dir, dict(lr=lr), device)
time.sleep(sleep)
finish_run(d, dict(status="ok", test_acc=lr))
"""


def sleepy_notebooks(folder: Path) -> Path:
    params = "run_dir: str = ''  # run\ndevice: str = 'cpu'  # device\nlr: float = 0.1  # value\nsleep: float = 3.0  # s\n"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(SLEEPY)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "finetune.ipynb")
    return folder


def test_ctrl_c_waits_for_the_runs_in_flight_exits_130_and_a_rerun_resumes(tmp_path):
    env = {**os.environ, "VITP_NOTEBOOKS": str(sleepy_notebooks(tmp_path / "nbs")), "OMP_NUM_THREADS": "1"}
    spec = {"name": "sleepy", "blocks": [{"kind": "finetune", "grid": {"lr": [0.1, 0.2, 0.3, 0.4]}}]}
    (tmp_path / "sleepy.yaml").write_text(yaml.safe_dump(spec))
    argv = ["grid", "run", str(tmp_path / "sleepy.yaml"), "--root", str(tmp_path / "runs"), "--jobs", "1"]
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ids = [r.id for r in expand(spec)]
    end = time.monotonic() + 120
    while not any((tmp_path / "runs" / i / "params.json").exists() for i in ids):  # a run in flight
        assert time.monotonic() < end and proc.poll() is None, "no run started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "waiting for the 1 run(s) in flight" in out + err and "run the same command again to resume" in err, err
    states = [run_status(tmp_path / "runs" / i) for i in ids]
    assert states.count("done") == 1 and states.count("missing") == 3, states  # it finished; no new one started
    assert subprocess.run([sys.executable, "-c", LAUNCH, *argv], env=env).returncode == 0
    assert {run_status(tmp_path / "runs" / i) for i in ids} == {"done"}


def test_report_names_corrupt_runs_and_writes_elsewhere_when_its_folder_is_read_only(tmp_path, capsys):
    env = {**os.environ, "VITP_NOTEBOOKS": str(sleepy_notebooks(tmp_path / "nbs"))}
    spec = {"name": "tiny", "blocks": [{"kind": "finetune", "params": {"sleep": 0.0}, "grid": {"lr": [0.1, 0.2]}}]}
    grid, root = tmp_path / "tiny.yaml", tmp_path / "runs"
    grid.write_text(yaml.safe_dump(spec))
    assert subprocess.run([sys.executable, "-c", LAUNCH, "grid", "run", str(grid), "--root", str(root)],
                          env=env).returncode == 0
    broken = expand(spec)[0].id
    (root / broken / "metrics.json").write_text('{"status": "ok", "test_ac')  # truncated after the fact
    out = subprocess.run([sys.executable, "-c", LAUNCH, "report", str(grid), "--root", str(root)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert f"`{broken}`: partial" in (root / "report" / "report.md").read_text()
    share = tmp_path / "share"
    share.write_text("a file where the report folder should go")
    out = subprocess.run([sys.executable, "-c", LAUNCH, "report", str(grid), "--root", str(root), "--out",
                          str(share / "report")], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("vitp: ") and "Traceback" not in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-c", LAUNCH, "report", str(grid), "--root", str(root), "--out",
                          str(tmp_path / "elsewhere")], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "elsewhere" / "report.md").is_file(), out.stderr
