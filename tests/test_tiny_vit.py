"""What nbs/20a_tiny_vit.ipynb cannot test in-process: the command as a console script runs it, and the same seed
gives bit-identical weights in two fresh processes."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vit_plasticity.models import TINY_VIT_FILE

# What a console-script entry point does: call the function from the top level of a `__main__` file.
ENTRY = "from vit_plasticity.tiny_vit import pretrain_tiny_vit_cli\npretrain_tiny_vit_cli()\n"
SMOKE = ("import sys\nfrom vit_plasticity.tiny_vit import pretrain_tiny_vit\n"
         "pretrain_tiny_vit(sys.argv[1], n_train=256, n_test=64, max_steps=3, bs=64)\n")


def _run(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / f"script_{hashlib.sha1(code.encode()).hexdigest()[:8]}.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": os.environ.get("PYTHONPATH", "")})  # a worktree's own package


def test_cli_help(tmp_path):
    out = _run(tmp_path, ENTRY, "--help")
    assert out.returncode == 0, out.stderr
    assert "--force" in out.stdout and "--epochs" in out.stdout
    assert "(default `pretrain_out()`)" in " ".join(out.stdout.split())  # the checkout's file, else ./


@pytest.mark.skipif(not TINY_VIT_FILE.with_suffix(".json").is_file(), reason="no shipped tiny ViT")
def test_cli_reuses_current_file(tmp_path):
    dest = tmp_path / "tiny.safetensors"
    shutil.copy(TINY_VIT_FILE, dest)
    shutil.copy(TINY_VIT_FILE.with_suffix(".json"), dest.with_suffix(".json"))
    out = _run(tmp_path, ENTRY, "--out", str(dest))
    assert out.returncode == 0, out.stderr
    assert "already holds this recipe's tiny ViT" in out.stdout


def test_same_seed_same_weights_across_processes(tmp_path):
    files = [tmp_path / f"run{i}.safetensors" for i in range(2)]
    for f in files:
        out = _run(tmp_path, SMOKE, str(f))
        assert out.returncode == 0, out.stderr
    assert files[0].read_bytes() == files[1].read_bytes()
