"""Bad input gets a clear error before any work starts (issue 7), checked with hypothesis on the public functions.

The project's errors are its own classes or the builtins they subclass, and nothing else:
- ValueError: a bad value, name or file content. Subclasses: `grid.GridSpecError` (grid files and parameters),
  `data.DataFormatError` and `data.IdxFormatError` (corrupt or truncated data), `models.WeightsFileError`.
- TypeError: an object of the wrong kind (`components.check_vit`: not a supported ViT).
- FileNotFoundError: something missing. Subclass: `data.DataNotFoundError` (absent or incomplete dataset).
- PermissionError: `runs.RunsDirError`, a runs folder that cannot be written.
(`models.WeightsUnavailableError`, a RuntimeError, is the one exception: published weights unreachable offline.)
Never an AssertionError, IndexError, KeyError or a RuntimeError from inside torch, and never an empty message.
"""
import gzip, io, json, os, string, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from vit_plasticity import data as D
from vit_plasticity.bounds import token_radius
from vit_plasticity.components import CONFIGURATIONS, HEAD, set_trainable
from vit_plasticity.grid import KINDS, GridSpecError, Run, check_names, check_params, expand, grids_dir, load_spec, run_grid
from vit_plasticity.models import PRESETS, WeightsFileError, load_vit, weight_shapes
from vit_plasticity.plasticity import measure_plasticity
from vit_plasticity.runs import RunsDirError, check_writable, start_run

ALLOWED = (ValueError, TypeError, FileNotFoundError, PermissionError)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

def refused(f, *mentions, kinds=ALLOWED) -> BaseException:
    "`f()` raises one of `kinds` with a message mentioning each of `mentions`; returns the error."
    try: f()
    except Exception as e:
        assert isinstance(e, kinds), f"{type(e).__name__} ({e}) is not one of the project's error types"
        assert str(e).strip(), f"{type(e).__name__} without a message"
        for m in mentions: assert str(m) in str(e), f"{m!r} not in the message: {e}"
        return e
    raise AssertionError("accepted bad input")

def outcome(f):
    "f()'s result, or the project's error (anything else fails the test)."
    try: return f()
    except Exception as e:
        assert isinstance(e, ALLOWED) and str(e).strip(), f"{type(e).__name__}: {e}"
        return e

names = st.text(alphabet=string.ascii_letters + string.digits + "-_., /", max_size=20)

@pytest.fixture(scope="module")
def vit():
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4, num_classes=10)

# ---------------------------------------------------------------------------------------------------------------
# Unknown names

@FAST
@given(name=names)
def test_unknown_names_are_refused_with_the_valid_ones(vit, name):
    assume(name not in D.DATASETS)
    refused(lambda: D.dataset_spec(name), repr(name), "cifar10")
    refused(lambda: check_names([Run("finetune", {"dataset": name})]), repr(name), "fix the grid file", kinds=GridSpecError)
    assume(name not in PRESETS and name.strip() and "/" not in name and not timm.is_model(name))
    refused(lambda: load_vit(name, pretrained=False), repr(name), "vit-b16")
    assume(name not in CONFIGURATIONS + (HEAD,))
    refused(lambda: set_trainable(vit, name), repr(name), "MHA")
    refused(lambda: set_trainable(vit, ["MHA", name]), repr(name))
    refused(lambda: check_names([Run("finetune", {"train": name})]), "unknown configuration", kinds=GridSpecError)
    assume(name not in {p.stem for p in grids_dir().glob("*.yaml")} and not (name.endswith((".yaml", ".yml")) and Path(name).exists()))
    refused(lambda: load_spec(name), "known grids are", kinds=GridSpecError)

# ---------------------------------------------------------------------------------------------------------------
# Grid files: keys, value types, parameters

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=32), st.text(max_size=4))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2))
keys = st.one_of(st.sampled_from(["kind", "params", "grid", "description", "lr", "seed", "train", "name"]), st.text(max_size=4), st.integers(0, 2))
params = st.dictionaries(keys, values, max_size=3)
grids = st.dictionaries(keys, st.one_of(st.lists(scalars, max_size=3), values), max_size=3)
blocks = st.one_of(st.fixed_dictionaries({"kind": st.one_of(st.sampled_from(KINDS), scalars)}, optional={"params": params, "grid": grids}),
                   st.dictionaries(keys, values, max_size=3), scalars)
specs = st.one_of(st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["ok", "a/b", "..", ".x"]), scalars),
                                         "blocks": st.one_of(st.lists(blocks, max_size=3), values)},
                                        optional={"defaults": st.one_of(params, values), "junk": values}), values)

@FAST
@given(spec=specs)
def test_any_grid_spec_expands_or_is_refused_with_a_grid_spec_error(spec):
    try: runs = expand(spec)  # a mapping is validated; anything else is taken for a grid's name or path
    except GridSpecError as e: assert str(e); return
    for r in runs:  # every run gets a safe folder name
        assert r.kind in KINDS and r.id.startswith(r.kind) and "/" not in r.id and r.id not in (".", "..")

TOY_DECLARED = {"run_dir": str, "device": str, "lr": float, "train": str, "seed": int, "fail": bool}

@pytest.fixture(scope="module")
def toy_nbs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nbs")
    src = "".join(f"{k}: {t.__name__} = {t()!r}  # help\n" for k, t in TOY_DECLARED.items())
    cells = [dict(cell_type="code", id="p", metadata={"tags": ["parameters"]}, execution_count=None, outputs=[], source=src)]
    nb = dict(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}}, nbformat=4, nbformat_minor=5)
    (folder / "finetune.ipynb").write_text(json.dumps(nb))
    return folder

def _fits(v, t) -> bool:
    return isinstance(v, (int, float) if t is float else t) and not (isinstance(v, bool) and t is not bool)

@FAST
@given(p=st.dictionaries(st.sampled_from(list(TOY_DECLARED) + ["learning_rate", "tarin", "n_step"]),
                         st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                                   st.sampled_from(["1e-2", "3", "MHA"]), st.none()), max_size=4))
def test_unknown_parameters_and_wrong_types_are_refused(toy_nbs, p):
    bad = set(p) - set(TOY_DECLARED) or {k for k, v in p.items() if not _fits(v, TOY_DECLARED[k])}
    if not bad: return check_params([Run("finetune", p)], toy_nbs)
    e = refused(lambda: check_params([Run("finetune", p)], toy_nbs), kinds=GridSpecError)
    assert all(k in str(e) for k in bad), (bad, str(e))  # every bad parameter is named
    if p.get("lr") == "1e-2" and set(p) <= set(TOY_DECLARED): assert "write 1.0e-2" in str(e)

def test_a_bad_grid_file_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VITP_RUNS", str(tmp_path / "runs"))
    base = "name: bad\ndefaults: {model: tiny-fmnist}\nblocks:\n  - kind: finetune\n    grid: {%s}\n"
    cases = {"lr: [1e-2]": "write 1.0e-2", "dataset: [cifar-11]": "unknown dataset 'cifar-11'",
             "train: [MHA, FFN]": "unknown configuration(s) ['FFN']", "learning_rate: [0.1]": "unknown parameter(s) ['learning_rate']",
             "lr: 0.1": "non-empty list of values", "lr: [[0.1]]": "must be a string, number"}
    for grid, message in cases.items():
        path = tmp_path / "bad.yaml"; path.write_text(base % grid)
        refused(lambda: run_grid(path, progress=False), message, kinds=GridSpecError)
        out = subprocess.run([str(Path(sys.executable).parent / "vitp"), "grid", "run", str(path)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}) if grid == "lr: [1e-2]" else None
        if out: assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    path.write_text("name: bad\nblocks: [kind: finetune\n")  # not YAML
    refused(lambda: load_spec(path), "is not valid YAML", kinds=GridSpecError)
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written

# ---------------------------------------------------------------------------------------------------------------
# Images: shape, dtype, NaN, empty

DTYPES = [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.bool]

@FAST
@given(b=st.integers(0, 3), c=st.sampled_from([1, 3, 4]), h=st.sampled_from([16, 31, 32]), w=st.sampled_from([32, 33]),
       extra_dim=st.sampled_from([None, "drop", "add"]), dtype=st.sampled_from(DTYPES), poison=st.sampled_from([None, "nan", "inf"]))
def test_images_of_the_wrong_shape_dtype_or_with_nan_are_refused(vit, b, c, h, w, extra_dim, dtype, poison):
    shape = {None: (b, c, h, w), "drop": (c, h, w), "add": (1, b, c, h, w)}[extra_dim]
    x = torch.randn(shape)
    if poison and x.numel(): x.view(-1)[0] = float(poison)
    x = x.to(dtype) if dtype.is_floating_point else (x.abs() * 10).to(dtype)
    good = extra_dim is None and b > 0 and (c, h, w) == (3, 32, 32) and dtype.is_floating_point and not (poison and x.numel())
    tgt = torch.randn(3, 3, 32, 32)
    for f in (lambda: measure_plasticity(vit, x, tgt, progress=False), lambda: token_radius(vit, x)):
        if good: f()
        else: refused(f)

def test_empty_inputs_are_refused(vit, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    refused(lambda: measure_plasticity(vit, x[:0], x, progress=False), "source is empty")
    refused(lambda: measure_plasticity(vit, x, x[:0], progress=False), "target is empty")
    refused(lambda: measure_plasticity(vit, [], x, progress=False), "source is empty")
    refused(lambda: token_radius(vit, []), "no images")
    refused(lambda: D.ArrayDataset(np.zeros((3, 8, 8), np.uint8), [0, 1]), "3 images but 2 labels")
    (tmp_path / "domainnet" / "clipart").mkdir(parents=True)
    refused(lambda: D.raw_parts("domainnet-clipart", root=tmp_path, download=False), "domainnet")

# ---------------------------------------------------------------------------------------------------------------
# Corrupt or truncated files: idx, .npy, image folders, weights

def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">i4").tobytes() + a.astype(np.uint8).tobytes()

@FAST
@given(data=st.data(), gz=st.booleans())
def test_truncated_or_corrupt_idx_files_are_refused(tmp_path, data, gz):
    raw = _idx(np.arange(2 * 3 * 4).reshape(2, 3, 4))
    how = data.draw(st.sampled_from(["truncate", "append", "header"]))
    if how == "truncate": bad = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "append": bad = raw + data.draw(st.binary(min_size=1, max_size=5))
    else:
        i = data.draw(st.integers(0, 15)); bad = raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1:]
    if gz: bad = gzip.compress(bad)[: data.draw(st.sampled_from([None, 12]))]
    path = tmp_path / f"x-idx3-ubyte{'.gz' if gz else ''}"; path.write_bytes(bad)
    result = outcome(lambda: D.read_idx(path))
    if how in ("truncate", "append") or (gz and len(bad) <= 12): assert isinstance(result, D.IdxFormatError), result
    elif not isinstance(result, Exception): assert result.nbytes == len(gzip.decompress(bad) if gz else bad) - 4 - 4 * result.ndim

@FAST
@given(data=st.data())
def test_truncated_or_malformed_npy_files_are_refused(tmp_path, data):
    folder = tmp_path / "CIFAR-10-C"; folder.mkdir(exist_ok=True)
    x, y = np.zeros((10, 32, 32, 3), np.uint8), np.arange(10) % 10
    which = data.draw(st.sampled_from(["contrast", "labels"]))
    for name, a in (("contrast", x), ("labels", y)):
        buf = io.BytesIO(); np.save(buf, a); raw = buf.getvalue()
        if name == which:
            how = data.draw(st.sampled_from(["truncate", "shape", "garbage"]))
            if how == "truncate": raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
            elif how == "shape": buf = io.BytesIO(); np.save(buf, a[:7] if name == "labels" else a[..., :1]); raw = buf.getvalue()
            else: raw = data.draw(st.binary(max_size=64))
        (folder / f"{name}.npy").write_bytes(raw)
    refused(lambda: D.load_cifar10c(tmp_path, "contrast", severity=1, block=2), "CIFAR-10-C", kinds=D.DataFormatError)

@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(present=st.integers(0, 4), expected=st.integers(1, 4), empty=st.booleans())
def test_image_folders_with_missing_or_empty_classes_are_refused(tmp_path, present, expected, empty):
    from PIL import Image
    root = tmp_path / f"f{present}{expected}{empty}"; root.mkdir(exist_ok=True)
    for k in range(present):
        (root / f"c{k}").mkdir(exist_ok=True)
        if not (empty and k == 0): Image.new("RGB", (4, 4)).save(root / f"c{k}" / "0.png")
    if present == expected and not (empty and present): assert len(D.image_folder(root, expected)) == present
    else: refused(lambda: D.image_folder(root, expected), str(root), kinds=D.DataNotFoundError)

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from safetensors.torch import save_file
    folder, kw = tmp_path_factory.mktemp("weights"), dict(img_size=32, patch_size=8, depth=2, num_classes=10)
    sd = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "ok.safetensors")
    torch.save(sd, folder / "ok.pth")
    return folder, kw

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), suffix=st.sampled_from([".safetensors", ".pth"]))
def test_corrupt_weights_files_are_refused(weights, tmp_path, data, suffix):
    folder, kw = weights
    raw = (folder / f"ok{suffix}").read_bytes()
    bad = data.draw(st.one_of(st.binary(max_size=64), st.integers(0, len(raw) - 1).map(lambda n: raw[:n])))
    path = tmp_path / f"bad{suffix}"; path.write_bytes(bad)
    refused(lambda: weight_shapes(path), str(path), kinds=WeightsFileError)
    refused(lambda: load_vit("vit_tiny_patch16_224", weights=path, **kw), str(path), kinds=WeightsFileError)

def test_weights_of_another_architecture_and_missing_files_are_refused(weights, tmp_path):
    folder, kw = weights
    assert load_vit("vit_tiny_patch16_224", weights=folder / "ok.safetensors", **kw) is not None  # the valid file loads
    refused(lambda: load_vit("vit_tiny_patch16_224", weights=folder / "ok.safetensors", **{**kw, "depth": 3}), "cannot be loaded", kinds=WeightsFileError)
    refused(lambda: load_vit("vit_tiny_patch16_224", weights=tmp_path / "none.pth", **kw), "does not exist", kinds=FileNotFoundError)

# ---------------------------------------------------------------------------------------------------------------
# Runs folder

def test_an_unwritable_runs_folder_is_refused_before_any_run(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"; blocker.write_text("")
    for root in (blocker / "runs", blocker):
        refused(lambda: check_writable(root), "point VITP_RUNS", kinds=RunsDirError)
        refused(lambda: start_run(root / "run-0", {"lr": 0.1}), "point VITP_RUNS", kinds=RunsDirError)
        refused(lambda: run_grid("smoke", root=root, progress=False), "point VITP_RUNS", kinds=RunsDirError)
    monkeypatch.setenv("VITP_RUNS", str(blocker / "runs"))
    refused(lambda: run_grid("smoke", progress=False), str(blocker), kinds=RunsDirError)
    if os.geteuid() != 0:  # root writes anywhere: permission bits only bind other users
        ro = tmp_path / "ro"; ro.mkdir(); ro.chmod(0o500)
        try: refused(lambda: run_grid("smoke", root=ro, progress=False), "point VITP_RUNS", kinds=RunsDirError)
        finally: ro.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] + (["ro"] if os.geteuid() != 0 else [])
