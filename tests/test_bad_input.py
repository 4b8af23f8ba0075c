"""Bad input gets a clear error before any work starts, checked with hypothesis on the public functions.

The project's errors are its own classes or the builtins they subclass, and nothing else:
- ValueError: a bad value, name or file content. Subclasses: `grid.GridSpecError` (grid files and parameters),
  `data.DataFormatError` and `data.IdxFormatError` (corrupt or truncated data), `models.WeightsFileError`.
- TypeError: an object of the wrong kind (`components.check_vit`: not a supported ViT; a dataset's name or a tensor
  where loaders belong). A model *name* that is not a supported ViT is a ValueError (`models.check_model_name`).
- FileNotFoundError: something missing. Subclass: `data.DataNotFoundError` (absent or incomplete dataset).
- PermissionError: `runs.RunsDirError`, a runs folder that cannot be written.
(`models.WeightsUnavailableError`, a RuntimeError, is the one exception: published weights unreachable offline.)
Never an AssertionError, IndexError, KeyError or a RuntimeError from inside torch, and never an empty message.
"""
import copy, gzip, io, json, os, resource, string, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader as FastaiLoader
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from torch.utils.data import TensorDataset

from vit_plasticity import data as D
from vit_plasticity.bounds import token_radius
from vit_plasticity.components import CONFIGURATIONS, HEAD, block_components, set_trainable
from vit_plasticity.finetune import evaluate, finetune, opt_func, reset_head, selective_learner
from vit_plasticity.grid import KINDS, GridSpecError, Run, check_names, check_params, expand, grids_dir, load_spec, run_grid
from vit_plasticity.models import (PRESETS, WeightsFileError, check_model_name, check_weights, load_vit,
                                   standin_vit, weight_shapes)
from vit_plasticity.plasticity import check_device, component_summary, layer_summary, measure_plasticity
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

# ---------------------------------------------------------------------------------------------------------------
# Science API: configurations, heads, model names, devices, loaders, overflow, numbers

def _grads(model) -> dict:
    return {n: p.requires_grad for n, p in model.named_parameters()}

def test_an_empty_or_non_integer_layer_list_is_refused_before_anything_changes(vit):
    before = _grads(vit)
    refused(lambda: set_trainable(vit, "MHA", layers=[]), "layers=[] names no block", "None for every block")
    refused(lambda: set_trainable(vit, "MHA", layers=[0.5]), "block indices must be integers, not [0.5]")
    refused(lambda: set_trainable(vit, "MHA", layers=[True]), "not [True]")
    refused(lambda: set_trainable(vit, "MHA", layers=1), "layers=1: pass a list of block", kinds=TypeError)
    refused(lambda: set_trainable(vit, "MHA", layers="01"), "pass a list of block indices", kinds=TypeError)
    refused(lambda: set_trainable(vit, []), "names no component", "pass 'head' to train the head alone")
    refused(lambda: set_trainable(vit, "MHA", train_head="no"), "train_head='no'", kinds=TypeError)
    refused(lambda: set_trainable(vit, "FC1", layers=[0, 7]), "layer(s) [7] out of range")
    assert _grads(vit) == before  # nothing was frozen or unfrozen by a refused call
    t = set_trainable(vit, "MHA", layers=np.array([1]))  # NumPy integers are indices
    assert t.loc["MHA", "trainable"] == sum(p.numel() for p in vit.blocks[1].attn.parameters())

def test_num_classes_is_a_non_negative_integer_and_0_means_no_head():
    tiny = dict(pretrained=False, depth=1, img_size=32, patch_size=8)
    for bad in (-3, 2.5, True, "10"):
        refused(lambda: load_vit("vit_tiny_patch16_224", num_classes=bad, **tiny), f"num_classes={bad!r}",
                "0 for no head", "None for the checkpoint's head")
        refused(lambda: load_vit("rehearse:vit-b16", num_classes=bad), f"num_classes={bad!r}")
        refused(lambda: standin_vit("vit-b16", num_classes=bad), f"num_classes={bad!r}")
    assert isinstance(load_vit("vit_tiny_patch16_224", num_classes=0, **tiny).head, torch.nn.Identity)
    assert load_vit("vit_tiny_patch16_224", num_classes=3, **tiny).head.out_features == 3
    refused(lambda: load_vit("vit_tiny_patch16_224", pretrained="no", depth=1), "pretrained='no': pass True")

def test_check_model_name_tells_supported_vits_by_name_without_downloading_or_allocating(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert check_model_name("vit-h14") == PRESETS["vit-h14"]  # 632M parameters: 2.5 GB if it were allocated
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000
    assert check_model_name("rehearse:vit-l16") == PRESETS["vit-l16"]
    assert check_model_name("tiny-fmnist") == PRESETS["tiny-fmnist"]
    assert check_model_name("deit_tiny_patch16_224.fb_in1k") == "deit_tiny_patch16_224.fb_in1k"
    for name in ("resnet18", "rehearse:resnet18", "swin_tiny_patch4_window7_224"):
        refused(lambda: check_model_name(name), repr(name), "is not a ViT this library can map", "supported:",
                "vit-b16", kinds=ValueError)  # a ValueError, as the grid's name checks expect
    refused(lambda: check_model_name("vit-b/16"), "unknown model 'vit-b/16'", kinds=ValueError)
    refused(lambda: check_model_name(16), "model name 16 is a int", kinds=ValueError)
    # load_vit and check_weights ask the same question first, not for weights (offline, nothing is cached)
    refused(lambda: load_vit("resnet18"), "is not a ViT", kinds=ValueError)
    refused(lambda: check_weights("resnet18"), "is not a ViT", kinds=ValueError)

def test_a_device_this_machine_lacks_is_refused_before_any_work(vit):
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = f"cuda:{n_gpus}"  # one past the last GPU: cuda:0 on a CPU-only machine
    drawn = []
    source = (drawn.append(1) or torch.randn(2, 3, 32, 32) for _ in range(1))  # records whether it was read
    target = torch.randn(2, 3, 32, 32)
    refused(lambda: measure_plasticity(vit, source, target, device=missing, progress=False),
            f"device={missing!r} is not available here", "device='cpu'", "None for the model's device")
    assert drawn == []
    refused(lambda: check_device("gpu", vit), "device='gpu' is not a torch device", "pass 'cpu'")
    with torch.device("meta"):
        ghost = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    x = torch.randn(2, 3, 32, 32)
    refused(lambda: measure_plasticity(ghost, x, x.flip(0)), "meta device")
    assert check_device(None, vit) == torch.device("cpu")

def _tiny(n_classes: int = 4):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                             num_classes=n_classes, in_chans=1)

def _data(n: int = 16, seed: int = 0, shift: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.arange(n) % 4 + shift)

def _dls(train: TensorDataset | None = None) -> DataLoaders:
    return DataLoaders(FastaiLoader(train or _data(16, 1), bs=8, shuffle=True, drop_last=True),
                       FastaiLoader(_data(8, 2), bs=8))

TEST_DL = FastaiLoader(_data(8, 3), bs=8)
FT = dict(n_steps=2, eval_period=1, warmup_steps=1)

def test_finetune_refuses_a_dataset_name_or_a_bad_test_loader_before_any_work():
    model = _tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % 4
    refused(lambda: finetune(model, "digits", TEST_DL, **FT), "dls='digits' is a dataset's name",
            "vit_plasticity.data.dataloaders('digits')", kinds=TypeError)
    pair = (_dls().train, _dls().valid)
    refused(lambda: finetune(model, pair, TEST_DL, **FT), "dls is a tuple: pass fastai", kinds=TypeError)
    for test_dl, mention in [("digits", "test_dl='digits' is a dataset's name"), (None, "a NoneType"),
                             (x, "test_dl is a Tensor"), ([x], "must yield (x, y) batches of tensors"),
                             ([(x, y.float())], "y must hold one integer class index per image"),
                             ([(x, y + 4)], "test_dl has labels 4..7, but the model's head has 4 classes"),
                             ([], "test_dl yields no batch")]:
        refused(lambda: finetune(model, _dls(), test_dl, seed=0, **FT), mention)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # no new head, no step
    refused(lambda: evaluate(model, "digits"), "dl='digits' is a dataset's name", kinds=TypeError)
    refused(lambda: evaluate(model, []), "dl yields no batch")
    m, _ = finetune(model, _dls(), TEST_DL, "MHA", seed=0, **FT)  # the same call with good loaders runs
    assert m["status"] == "ok" and m["steps_done"] == 2

def test_finetune_refuses_an_unusable_model_before_any_work():
    cases = [(_tiny().half(), "call model.float()"), (_tiny().to("meta"), "meta device"),
             (_tiny(0), "no classification head (num_classes=0"), (torch.nn.Linear(3, 3), "not a timm"),
             (_tiny(2), "dls.valid has labels 0..3, but the model's head has 2 classes")]
    for model, mention in cases:
        refused(lambda: finetune(model, _dls(), TEST_DL, **FT), mention)
        refused(lambda: selective_learner(model, _dls(), **FT), mention)
    ten = _dls(); ten.c = 10
    refused(lambda: finetune(_tiny(), ten, TEST_DL, **FT), "the loaders have 10 classes (dls.c)",
            "num_classes=dls.c")
    amp = "call model.cuda()" if torch.cuda.is_available() else "needs a CUDA GPU"
    refused(lambda: selective_learner(_tiny(), _dls(), mixed_precision=True, **FT), amp)
    bad_train = _dls(_data(16, 1, shift=4))  # labels 4..7 in training only: found when served
    refused(lambda: finetune(_tiny(), bad_train, TEST_DL, **FT), "dls.train has labels 4..7")

bad_numbers = st.one_of(st.floats(max_value=-1e-6), st.sampled_from([float("nan"), float("inf"), "1e-2", None,
                                                                     True]))
bad_counts = st.one_of(st.integers(max_value=-1), st.sampled_from([2.5, 1.0, True, "3", None]))

@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_bad_numbers_are_refused_with_their_name(data):
    names = ["lr", "wd", "clip", "n_steps", "eval_period", "grad_accum", "warmup_steps"]
    name = data.draw(st.sampled_from(names))
    value = data.draw(bad_numbers if name in ("lr", "wd", "clip") else bad_counts)
    assume(not (name == "clip" and value is None))  # None: no clipping
    assume(not (name == "warmup_steps" and type(value) is int and value >= 0))  # 0 warm-up steps is fine
    kw = {**FT, "n_steps": 4, "eval_period": 2, name: value}
    refused(lambda: selective_learner(_tiny(), _dls(), "MHA", **kw), f"{name}={value!r}: pass a finite number"
            if name in ("lr", "wd", "clip") else f"{name}={value!r}: pass an integer")

def test_other_bad_arguments_of_the_science_functions_are_refused(vit):
    x = torch.randn(4, 3, 32, 32)
    m = lambda *a, **kw: measure_plasticity(vit, *a, progress=False, **kw)
    refused(lambda: m(x, x.flip(0), batch_size=True), "batch_size must be a positive integer, got True")
    refused(lambda: m(x, x.flip(0), n_pairs=True), "n_pairs must be a positive integer, got True")
    refused(lambda: m("digits", x), "source='digits' is a name", "plasticity_images('digits')")
    refused(lambda: m(None, x), "source is a NoneType", kinds=TypeError)
    nan_vit = copy.deepcopy(vit)
    with torch.no_grad(): nan_vit.blocks[1].attn.qkv.weight[0, 0] = float("nan")
    refused(lambda: measure_plasticity(nan_vit, x, x.flip(0)), "['blocks.1.attn.qkv.weight'] hold NaN or inf")
    refused(lambda: block_components(vit, 2), "layer=2: the model has blocks 0..1")
    assert block_components(vit, -1)["MHA"] is vit.blocks[1].attn
    ratios = pd.DataFrame({"pair": 0, "layer": [0, 1], "component": "MHA", "ratio": [1.0, 2.0]})
    refused(lambda: layer_summary(ratios, by="target"), "no column(s) ['target']")
    refused(lambda: component_summary(ratios.drop(columns="ratio")), "no column(s) ['mean']")
    refused(lambda: layer_summary(ratios.to_dict()), "takes a pandas DataFrame", kinds=TypeError)
    refused(lambda: reset_head(_tiny(), True), "n_classes must be a positive integer, got True")
    refused(lambda: reset_head(_tiny(), 3, seed=1.5), "seed=1.5")
    refused(lambda: opt_func("sgd", wd=-1e-4), "wd=-0.0001")
    refused(lambda: selective_learner(_tiny(), _dls(), "MHA", **{**FT, "clip": 0}), "clip=0", "None for no")
    refused(lambda: selective_learner(_tiny(), _dls(), "MHA", cbs=5, **FT), "cbs=5", kinds=TypeError)
    refused(lambda: finetune(_tiny(), _dls(), TEST_DL, learning_rate=0.1, **FT), "'learning_rate'")

# ---------------------------------------------------------------------------------------------------------------
# Overflow and underflow in fp32

def test_overflowing_images_stop_the_measurement_at_their_batch_naming_pairs_layers_and_scale(vit):
    torch.manual_seed(1)
    src, tgt = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    src[4:] *= 1e30
    tgt[4:] *= 1e30  # the second batch of 4 pairs overflows fp32; the first is ordinary
    scale = max(src.abs().max().item(), tgt.abs().max().item())
    for protocol in ("paper", "in_situ"):
        e = refused(lambda: measure_plasticity(vit, src, tgt, protocol, batch_size=4, progress=False),
                    "4 pair(s), e.g. pairs [4, 5, 6, 7], are NaN or infinite", "fp32 overflowed",
                    f"largest |pixel| is {scale:.3g}", "normalise them", kinds=ValueError)
        assert "layer(s) [0" in str(e)
    df = measure_plasticity(vit, src[:4], tgt[:4], batch_size=4, progress=False)  # the ordinary half alone
    assert np.isfinite(df["ratio"]).all() and len(df) == 4 * 2 * 5

def test_pairs_of_different_images_with_equal_embeddings_are_not_called_identical(vit):
    torch.manual_seed(2)
    src, tgt = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    src[2:] *= 1e-30
    tgt[2:] *= 1e-30  # their embeddings are equal in fp32: bias and position embedding swamp the patches
    tgt[0] = src[0]  # a truly identical pair
    with pytest.warns(UserWarning) as w:
        df = measure_plasticity(vit, src, tgt, progress=False)
    msg = str(w[0].message)
    assert "1 pair(s) of identical images, e.g. pairs [0]" in msg
    assert "2 pair(s) of different images whose inputs are equal in fp32, e.g. pairs [2, 3]" in msg
    assert sorted(df["pair"].unique()) == [1]
    with pytest.warns(UserWarning):
        refused(lambda: measure_plasticity(vit, src[2:], tgt[2:], progress=False), "no pair has d_in > 0",
                kinds=ValueError)
