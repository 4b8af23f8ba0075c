"Format tests of `vit_plasticity.data` on tiny files written in the exact on-disk layouts; the network is blocked."
import gzip, json, socket, sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_plasticity import data as D


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs): raise OSError("network disabled in tests")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def write_idx(path: Path, a: np.ndarray, code: int = 0x08):
    data = bytes([0, 0, code, a.ndim]) + np.array(a.shape, ">i4").tobytes() + a.astype(D._IDX_DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def fake_fmnist(root: Path, n: int = 40) -> Path:
    "Fashion-MNIST idx files with `n` random images per split, in Debian's gzipped layout."
    rng = np.random.default_rng(0); root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def write_tree(root: Path, classes: list[str], per_class: int = 1, size=(6, 5)):
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class): Image.new("RGB", size, (k % 256, i, 0)).save(root / c / f"{i}.jpg")


# ---- idx files ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_idx_round_trip_every_type(tmp_path, code, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / "a.idx", a, code)
    out = D.read_idx(tmp_path / "a.idx")
    assert out.dtype == dtype and out.dtype.isnative and (out == a).all()


@pytest.mark.parametrize("mangle,msg", [
    (lambda b: b[:-1], "truncated or corrupt"),
    (lambda b: b + b"\0", "truncated or corrupt"),
    (lambda b: b[:6], "truncated header"),
    (lambda b: b"\0\0\x07\x03" + b[4:], "bad magic number"),  # unknown type code
    (lambda b: b"\0\0\x08\x00" + b[4:], "bad magic number"),  # zero dimensions
    (lambda b: b"", "bad magic number"),
])
def test_idx_broken_files_raise_clear_errors(tmp_path, mangle, msg):
    write_idx(tmp_path / "a.idx", np.zeros((2, 3), np.uint8))
    (tmp_path / "b.idx").write_bytes(mangle((tmp_path / "a.idx").read_bytes()))
    with pytest.raises(D.IdxFormatError, match=msg): D.read_idx(tmp_path / "b.idx")


def test_idx_corrupt_gzip(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((50, 28, 28), np.uint8))
    raw = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "b.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(D.IdxFormatError, match="gzip"): D.read_idx(tmp_path / "b.gz")


def test_fashion_mnist_from_a_folder(tmp_path):
    x, y = D.load_fashion_mnist("test", root=fake_fmnist(tmp_path, 12), download=False)
    assert x.shape == (12, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64 and y.tolist() == [i % 10 for i in range(12)]


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"; raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28))); write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(3))
    assert D.load_fashion_mnist("test", root=tmp_path, download=False)[0].shape == (3, 28, 28)


def test_fashion_mnist_errors(tmp_path):
    fake_fmnist(tmp_path, 12)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(11))  # one label short
    with pytest.raises(D.DataFormatError, match="12, 28, 28"): D.load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(D.DataNotFoundError, match="zalandoresearch"): D.load_fashion_mnist("train", root=tmp_path / "none", download=False)
    with pytest.raises(ValueError, match="'train' or 'test'"): D.load_fashion_mnist("valid")


# ---- CIFAR-10-C -----------------------------------------------------------------------------------------------------

BLOCK = 20

def fake_cifar10c(root: Path, corruption="snow", block=BLOCK):
    folder = root / "CIFAR-10-C"; folder.mkdir(parents=True, exist_ok=True)
    x = np.zeros((5 * block, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0] = np.repeat(np.arange(1, 6), block)  # pixel (0, 0) holds the severity ...
    x[:, 0, 1, 0] = np.tile(np.arange(block), 5)  # ... and pixel (0, 1) the row within the block
    np.save(folder / f"{corruption}.npy", x); np.save(folder / "labels.npy", np.tile(np.arange(block) % 10, 5))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_cifar10c_severity_blocks(tmp_path, severity):
    fake_cifar10c(tmp_path)
    (ds,) = D.load_cifar10c(tmp_path, "snow", severity=severity, block=BLOCK)
    ims = [ds[i][0] for i in range(len(ds))]
    assert len(ds) == BLOCK and all(im[0, 0, 0] == severity for im in ims)
    assert [int(im[0, 0, 1]) for im in ims] == list(range(BLOCK)) and [ds[i][1] for i in range(3)] == [0, 1, 2]


def test_cifar10c_format_errors(tmp_path):
    fake_cifar10c(tmp_path)
    with pytest.raises(D.DataFormatError, match=r"expected \(50000, 32, 32, 3\) uint8"): D.load_cifar10c(tmp_path, "snow")
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((5 * BLOCK, 32, 32, 3), np.float32))
    with pytest.raises(D.DataFormatError, match="float32"): D.load_cifar10c(tmp_path, "fog", block=BLOCK)
    raw = (tmp_path / "CIFAR-10-C" / "snow.npy").read_bytes()
    (tmp_path / "CIFAR-10-C" / "snow.npy").write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(D.DataFormatError, match="unreadable"): D.load_cifar10c(tmp_path, "snow", block=BLOCK)
    (tmp_path / "CIFAR-10-C" / "labels.npy").unlink()
    with pytest.raises(D.DataNotFoundError, match="labels.npy"): D.load_cifar10c(tmp_path, "fog", block=BLOCK)


@pytest.fixture
def small_cifar10c(tmp_path, monkeypatch):
    "The registry's cifar10c-snow reading blocks of 20 rows."
    fake_cifar10c(tmp_path)
    spec = D.DATASETS["cifar10c-snow"]
    monkeypatch.setitem(D.DATASETS, "cifar10c-snow",
                        replace(spec, load=lambda r, d, c: D.load_cifar10c(r, "snow", block=BLOCK, download=d)))
    return tmp_path


def test_cifar10c_dataloaders(small_cifar10c):
    dls = D.dataloaders("cifar10c-snow", root=small_cifar10c, bs=4, img_size=48, download=False)
    assert [len(dl.dataset) for dl in dls.loaders] == [13, 3, 4]  # 20 -> 16/4 (seed 42) -> 80/20 (run seed)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 48, 48) and xb.dtype == torch.float32 and yb.dtype == torch.int64 and dls.c == 10
    xt, _ = next(iter(dls[2]))
    raw = xt * torch.tensor(D.IMAGENET_STD)[:, None, None] + torch.tensor(D.IMAGENET_MEAN)[:, None, None]
    assert raw.shape == (4, 3, 48, 48) and raw.min() > -1e-4  # eval: Resize + CenterCrop + ImageNet normalisation
    other = D.dataloaders("cifar10c-snow", root=small_cifar10c, seed=42, bs=4, img_size=48, download=False)
    assert other[2].dataset.idxs == dls[2].dataset.idxs and other.train.dataset.idxs != dls.train.dataset.idxs


def test_cifar10c_severity_5_only(small_cifar10c):
    imgs = D.plasticity_images("cifar10c-snow", 4, root=small_cifar10c, img_size=32, normalize="none", download=False)
    assert imgs.shape == (4, 3, 32, 32) and torch.allclose(imgs[:, 0, 0, 0], torch.full((4,), 5 / 255))


def test_cifar10c_missing_names_layout_and_record(tmp_path):
    with pytest.raises(D.DataNotFoundError, match=r"CIFAR-10-C/snow.npy.*zenodo.org/records/2535967"):
        D.dataloaders("cifar10c-snow", root=tmp_path, download=False)


# ---- DomainNet, ImageNet val (image folders) ----------------------------------------------------------------------

CLASSES = [f"class_{k:03d}" for k in range(D.DOMAINNET_CLASSES)]

def test_domainnet_dataloaders(tmp_path):
    write_tree(tmp_path / "domainnet" / "clipart", CLASSES)
    dls = D.dataloaders("domainnet-clipart", root=tmp_path, bs=8, img_size=16, download=False)
    assert [len(dl.dataset) for dl in dls.loaders] == [221, 55, 69] and dls.c == 345
    xb, yb = dls.one_batch()
    assert xb.shape == (8, 3, 16, 16) and yb.max() < 345
    again = D.dataloaders("domainnet-clipart", root=tmp_path, bs=8, img_size=16, download=False)
    assert [d.dataset.idxs for d in again.loaders] == [d.dataset.idxs for d in dls.loaders]


def test_domainnet_missing_classes(tmp_path):
    write_tree(tmp_path / "domainnet" / "sketch", CLASSES[:3])
    with pytest.raises(D.DataNotFoundError, match="3 class folders, expected 345"):
        D.dataloaders("domainnet-sketch", root=tmp_path, download=False)


def test_domainnet_empty_class_and_empty_folder(tmp_path):
    write_tree(tmp_path / "domainnet" / "sketch", CLASSES[:-1]); (tmp_path / "domainnet" / "sketch" / CLASSES[-1]).mkdir()
    with pytest.raises(D.DataNotFoundError, match=CLASSES[-1]): D.dataloaders("domainnet-sketch", root=tmp_path, download=False)
    (tmp_path / "domainnet" / "clipart").mkdir()
    with pytest.raises(D.DataNotFoundError, match="class folder"): D.dataloaders("domainnet-clipart", root=tmp_path, download=False)


def test_domainnet_absent_names_layout_and_zip(tmp_path):
    with pytest.raises(D.DataNotFoundError, match=r"domainnet/clipart/<class>/\*.jpg.*groundtruth/clipart.zip"):
        D.dataloaders("domainnet-clipart", root=tmp_path, download=False)
    with pytest.raises(D.DataNotFoundError, match="the download failed"):  # online attempt, network blocked
        D.dataloaders("domainnet-sketch", root=tmp_path, download=True)


def test_imagenet_val_sample_is_the_whole_folder_in_order(tmp_path):
    wnids = [f"n{k:08d}" for k in range(1000)]
    write_tree(tmp_path / "imagenet" / "val", wnids, size=(8, 8))
    ds = D.plasticity_sample("imagenet-val", 1003, root=tmp_path, img_size=8, download=False)
    assert len(ds) == 1003 and ds.idxs[:1000] == list(range(1000)) and ds.idxs[1000:] == [0, 1, 2]
    assert [ds[k][1] for k in (0, 1, 999)] == [0, 1, 999]


# ---- torchvision datasets: absent ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,layout", [("cifar10", "cifar-10-batches-py/"), ("cifar100", "cifar-100-python/"),
    ("flowers102", "flowers-102/"), ("pet", "oxford-iiit-pet/"), ("imagenette", "imagenette2-320/")])
def test_torchvision_datasets_absent(tmp_path, name, layout):
    with pytest.raises(D.DataNotFoundError, match=layout): D.dataloaders(name, root=tmp_path, download=False)


def test_download_attempt_offline_is_a_data_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py/"): D.dataloaders("cifar10", root=tmp_path, download=True)


# ---- registry and generic errors ------------------------------------------------------------------------------------

def test_unknown_name_lists_every_valid_name():
    with pytest.raises(ValueError) as e: D.dataloaders("cifar-10")
    for name in D.DATASETS: assert name in str(e.value)


def test_empty_and_too_small_datasets(monkeypatch):
    spec = D.DATASETS["digits"]
    empty = D.ArrayDataset(np.zeros((0, 32, 32), np.uint8), [])
    monkeypatch.setitem(D.DATASETS, "digits", replace(spec, load=lambda r, d, c: (empty,)))
    with pytest.raises(D.DataFormatError, match="no images"): D.dataloaders("digits")
    two = D.ArrayDataset(np.zeros((2, 32, 32), np.uint8), [0, 1])
    monkeypatch.setitem(D.DATASETS, "digits", replace(spec, load=lambda r, d, c: (two,)))
    with pytest.raises(D.DataFormatError, match="split is empty"): D.dataloaders("digits")


# ---- offline benchmark ----------------------------------------------------------------------------------------------

def test_benchmark_domain_generated_once_and_cached(tmp_path, monkeypatch):
    root, cache = fake_fmnist(tmp_path / "fm", 40), tmp_path / "cache"
    x, y = D.tiny_domain("snow", root=root, cache=cache, progress=False)
    assert x.shape == (40, 32, 32) and x.dtype == np.uint8 and y.tolist() == [i % 10 for i in range(40)]
    folder = cache / "benchmark"
    assert sorted(p.name for p in folder.iterdir()) == ["fmnist-snow-v1.json", "fmnist-snow-v1.npy"]  # no temporary files
    rec = json.loads((folder / "fmnist-snow-v1.json").read_text())
    assert rec["n"] == 40 and rec["seconds"] >= 0 and rec["severity"] == 5
    monkeypatch.setattr(D, "make_domain", lambda *a, **k: pytest.fail("regenerated a cached domain"))
    assert (D.tiny_domain("snow", root=root, cache=cache)[0] == x).all()
    assert list(D.generation_times(cache).index) == ["snow"]


def test_benchmark_dataloaders(tmp_path):
    root, cache = fake_fmnist(tmp_path / "fm", 50), tmp_path / "cache"
    for name in ("fmnist", "fmnist-sketch", "fmnist-gaussian_noise"):
        dls = D.dataloaders(name, root=root, cache=cache, bs=5)
        xb, yb = dls.one_batch()
        assert xb.shape == (5, 1, 32, 32) and dls.c == 10
    assert [len(dl.dataset) for dl in D.dataloaders("fmnist", root=root, cache=cache).loaders] == [40, 10, 50]
    assert [len(dl.dataset) for dl in D.dataloaders("fmnist-snow", root=root, cache=cache).loaders] == [32, 8, 10]


def test_benchmark_source_sample_is_fashion_mnist_test_in_order(tmp_path):
    root = fake_fmnist(tmp_path, 6)
    imgs = D.plasticity_images("fmnist", 8, root=root, normalize="none")
    x, _ = D.load_fashion_mnist("test", root=root)
    assert imgs.shape == (8, 1, 32, 32)
    assert torch.allclose(imgs[:6, 0, 2:30, 2:30], x.float() / 255) and torch.equal(imgs[6:], imgs[:2])


def test_corruptions_leave_numpy_random_state_alone():
    x = np.zeros((2, 32, 32), np.uint8)
    np.random.seed(7); expected = np.random.rand(3)
    np.random.seed(7); D.corrupt_gray(x, "gaussian_noise"); got = np.random.rand(3)
    assert (expected == got).all()


def test_imagecorruptions_shim_leaves_no_pkg_resources():
    before = "pkg_resources" in sys.modules
    D._imagecorruptions_corrupt()
    assert ("pkg_resources" in sys.modules) == before


def test_corrupt_gray_needs_32_pixels():
    with pytest.raises(AttributeError, match="at least 32"): D.corrupt_gray(np.zeros((1, 28, 28), np.uint8), "snow")


def test_worker_processes(tmp_path):
    dls = D.dataloaders("fmnist", root=fake_fmnist(tmp_path, 20), bs=4, num_workers=1)
    assert dls.one_batch()[0].shape == (4, 1, 32, 32)


def test_tiny_train_shift_keeps_white_paper_white():
    train, _ = D.tiny_transforms(normalize="none")
    white = D.tv_tensors.Image(torch.full((1, 32, 32), 255, dtype=torch.uint8))
    assert all(torch.equal(train(white), torch.ones(1, 32, 32)) for _ in range(20))
