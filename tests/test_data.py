"Format tests of `vit_plasticity.data` on tiny files written in the exact on-disk layouts; the network is blocked."
import gzip, json, pickle, socket, sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

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
    with pytest.raises(D.DataFormatError, match=r"expected \(50000, 32, 32, 3\) uint8"):
        D.load_cifar10c(tmp_path, "snow", block=10_000)
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((5 * BLOCK, 32, 32, 3), np.float32))
    with pytest.raises(D.DataFormatError, match="float32"): D.load_cifar10c(tmp_path, "fog", block=BLOCK)
    raw = (tmp_path / "CIFAR-10-C" / "snow.npy").read_bytes()
    (tmp_path / "CIFAR-10-C" / "snow.npy").write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(D.DataFormatError, match="unreadable"): D.load_cifar10c(tmp_path, "snow", block=BLOCK)
    (tmp_path / "CIFAR-10-C" / "labels.npy").unlink()
    with pytest.raises(D.DataNotFoundError, match="labels.npy"): D.load_cifar10c(tmp_path, "fog", block=BLOCK)


def test_cifar10c_rows_per_severity_from_the_file(tmp_path):
    fake_cifar10c(tmp_path, block=7)
    (ds,) = D.load_cifar10c(tmp_path, "snow", severity=4)
    assert len(ds) == 7 and all(ds[i][0][0, 0, 0] == 4 for i in range(7))
    np.save(tmp_path / "CIFAR-10-C" / "snow.npy", np.zeros((34, 32, 32, 3), np.uint8))  # not 5 blocks
    with pytest.raises(D.DataFormatError, match=r"\(34, 32, 32, 3\) uint8 and labels.npy \(35,\); expected \(5k"):
        D.load_cifar10c(tmp_path, "snow")


@pytest.fixture
def small_cifar10c(tmp_path):
    "CIFAR-10-C in the official format with blocks of 20 rows: the registry's loader reads it as it is."
    fake_cifar10c(tmp_path)
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
    imgs = D.plasticity_images("cifar10c-snow", 4, root=small_cifar10c, img_size=32, normalize="none", download=False,
                               batch_size=4)
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
    ds = D.plasticity_sample("imagenet-val", 1003, root=tmp_path, img_size=8, download=False, pairing="cycle_all")
    assert len(ds) == 1003 and ds.idxs[:1000] == list(range(1000)) and ds.idxs[1000:] == [0, 1, 2]
    assert [ds[k][1] for k in (0, 1, 999)] == [0, 1, 999]
    authors = D.plasticity_sample("imagenet-val", 1003, root=tmp_path, img_size=8, download=False)  # batch 64
    assert authors.idxs[:960] == list(range(960)) and authors.idxs[960:] == list(range(43))  # 1,000 = 15 x 64 + 40


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
    assert [len(dl.dataset) for dl in D.dataloaders("fmnist", root=root, cache=cache, bs=8).loaders] == [40, 10, 50]
    assert [len(dl.dataset) for dl in D.dataloaders("fmnist-snow", root=root, cache=cache, bs=8).loaders] == [32, 8, 10]


def test_benchmark_source_sample_is_fashion_mnist_test_in_order(tmp_path):
    root = fake_fmnist(tmp_path, 6)
    imgs = D.plasticity_images("fmnist", 8, root=root, normalize="none", pairing="cycle_all")
    x, _ = D.load_fashion_mnist("test", root=root)
    assert imgs.shape == (8, 1, 32, 32)
    assert torch.allclose(imgs[:6, 0, 2:30, 2:30], x.float() / 255) and torch.equal(imgs[6:], imgs[:2])
    authors = D.plasticity_images("fmnist", 8, root=root, normalize="none", batch_size=4)  # 6 = 4 + 2 unused
    assert torch.equal(authors, imgs[[0, 1, 2, 3, 0, 1, 2, 3]])


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


# ---- CIFAR-10/100 from the python pickles ---------------------------------------------------------------------------

def write_cifar(root: Path, n_classes: int, seed: int = 0) -> Path:
    "CIFAR batches in the official layout: random pixels and labels, a few images per batch."
    files = D.CIFAR[n_classes]
    folder = root / files.folder; folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in zip(files.train + files.test, (3, 2, 4, 1, 2, 5) if n_classes == 10 else (12, 5)):
        y = rng.integers(0, n_classes, n).tolist()
        d = {"batch_label": name, files.label_key: y, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "filenames": [f"{name}_{i}.png" for i in range(n)]}
        if n_classes == 100: d["coarse_labels"] = [k // 5 for k in y]
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {files.names_key: [f"class_{k}" for k in range(n_classes)]}
    (folder / files.meta).write_bytes(pickle.dumps(meta, protocol=2))
    return folder


@pytest.mark.parametrize("n_classes", [10, 100])
def test_cifar_reads_what_torchvision_reads(tmp_path, monkeypatch, n_classes):
    import torchvision.datasets.cifar as tvc
    write_cifar(tmp_path, n_classes)
    monkeypatch.setattr(tvc, "check_integrity", lambda path, md5=None: Path(path).is_file())  # tiny files: no md5
    cls = {10: tvc.CIFAR10, 100: tvc.CIFAR100}[n_classes]
    eval_tfm = D.paper_transforms(48)[1]
    for ours, train in zip(D.load_cifar(tmp_path, n_classes), (True, False)):
        theirs = cls(str(tmp_path), train=train)
        assert np.array_equal(ours.images, theirs.data) and ours.labels.tolist() == theirs.targets
        for i in (0, len(theirs) - 1):
            assert ours[i][1] == theirs[i][1] and torch.equal(eval_tfm(ours[i][0]), eval_tfm(theirs[i][0]))
    assert (D.CIFAR[n_classes].url, D.CIFAR[n_classes].md5) == (cls.url, cls.tgz_md5)  # the official archive


def test_cifar_format_errors_name_the_file(tmp_path):
    folder = write_cifar(tmp_path, 10)
    good = (folder / "data_batch_2").read_bytes()
    bad = pickle.loads(good, encoding="latin1"); bad["labels"][0] = 10
    (folder / "data_batch_2").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(D.DataFormatError, match=r"data_batch_2: labels .*expected 0..9"): D.load_cifar(tmp_path)
    bad["labels"][0] = 0; bad["data"] = bad["data"][:, :100]
    (folder / "data_batch_2").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(D.DataFormatError, match=r"data_batch_2: data is \(2, 100\) uint8"): D.load_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(D.DataFormatError, match="data_batch_2: not a CIFAR pickle"): D.load_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": print}))  # a pickle that names a function
    with pytest.raises(D.DataFormatError, match="refused global builtins.print"): D.load_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(good)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}, protocol=2))
    with pytest.raises(D.DataFormatError, match="batches.meta: 'label_names' should list 10"): D.load_cifar(tmp_path)


def test_cifar_missing_files_name_the_layout(tmp_path):
    (write_cifar(tmp_path, 100) / "meta").unlink()
    with pytest.raises(D.DataNotFoundError, match=r"missing meta; expected cifar-100-python/\{train,test,meta\}"):
        D.load_cifar(tmp_path, 100)
    with pytest.raises(D.DataNotFoundError, match=r"cifar-100-python/\{train,test,meta\}.*cifar-100-python.tar.gz"):
        D.raw_parts("cifar100", root=tmp_path, download=False)


def test_cifar_download_only_when_the_folder_is_absent(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(D, "_download_archive", lambda url, root, md5=None: calls.append((url, Path(root), md5)))
    with pytest.raises(D.DataNotFoundError): D.load_cifar(tmp_path, 10, download=True)  # the fake download adds nothing
    assert calls == [(D.CIFAR[10].url, tmp_path, "c58f30108f718f92721af3b95e74349a")]
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(D.DataNotFoundError, match="missing data_batch_1"): D.load_cifar(tmp_path, 10, download=True)
    assert len(calls) == 1  # a folder on disk, even incomplete, is never downloaded over


def test_cifar_splits_and_loaders(tmp_path):
    write_cifar(tmp_path, 10)
    dls = D.dataloaders("cifar10", root=tmp_path, bs=3, img_size=16, download=False)
    assert [len(dl.dataset) for dl in dls.loaders] == [10, 2, 5] and dls.c == 10  # 12 -> 80/20; the official test
    assert dls.one_batch()[0].shape == (3, 3, 16, 16)


# ---- Flowers102 from its .mat files ---------------------------------------------------------------------------------

def write_flowers(root: Path, n: int = 12, seed: int = 0) -> Path:
    folder = root / "flowers-102"; (folder / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(folder / "jpg" / f"image_{i:05d}.jpg")
    ids = rng.permutation(n) + 1  # the sets interleave, in no sorted order
    savemat(folder / "imagelabels.mat", {"labels": rng.integers(1, 103, (1, n)).astype(np.uint8)})
    savemat(folder / "setid.mat", {"trnid": ids[None, :4].astype(np.uint16), "valid": ids[None, 4:7].astype(np.uint16),
                                   "tstid": ids[None, 7:].astype(np.uint16)})
    return folder


def test_flowers_reads_what_torchvision_reads(tmp_path, monkeypatch):
    import torchvision.datasets.flowers102 as tvf
    write_flowers(tmp_path)
    monkeypatch.setattr(tvf, "check_integrity", lambda path, md5=None: Path(path).is_file())
    for ours, split in zip(D.load_flowers102(tmp_path), ("train", "val", "test")):
        theirs = tvf.Flowers102(str(tmp_path), split=split)
        assert ours.files == theirs._image_files and ours.labels == theirs._labels
        for i in range(len(ours)):
            assert ours[i][1] == theirs[i][1] and np.array_equal(np.asarray(ours[i][0]), np.asarray(theirs[i][0]))
    assert [len(p) for p in D.load_flowers102(tmp_path)] == [4, 3, 5]


def test_flowers_errors(tmp_path):
    folder = write_flowers(tmp_path)
    (folder / "jpg" / "image_00003.jpg").unlink()
    with pytest.raises(D.DataNotFoundError, match="1 images missing, e.g. image_00003.jpg"): D.load_flowers102(tmp_path)
    (folder / "setid.mat").write_bytes(b"not a mat file")
    with pytest.raises(D.DataFormatError, match="setid.mat: unreadable .mat"): D.load_flowers102(tmp_path)
    (folder / "setid.mat").unlink()
    with pytest.raises(D.DataNotFoundError, match=r"flowers-102/\{jpg/image_%05d.jpg,imagelabels.mat,setid.mat\}"):
        D.raw_parts("flowers102", root=tmp_path, download=False)


# ---- the authors' fixed split and plasticity pairs ------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 50, 345, 1797, 10_000])
def test_fixed_split_is_the_authors_numpy_split(n):
    state = np.random.get_state()
    try:
        np.random.seed(42)
        idx = np.random.permutation(n)
    finally: np.random.set_state(state)
    train, test = D.fixed_split_idxs(n)
    assert train == np.sort(idx[: int(0.8 * n)]).tolist() and test == np.sort(idx[int(0.8 * n):]).tolist()
    assert D.fixed_split_idxs(n, "torch") == D.split_idxs(n, 42)  # the project's earlier split, kept by name


def test_fixed_split_reaches_every_loader(small_cifar10c):
    kw = dict(root=small_cifar10c, img_size=8, download=False)
    numpy_test = D.fixed_split_idxs(20)[1]
    assert D.dataset_splits("cifar10c-snow", **kw)[2].idxs == numpy_test
    assert D.dataloaders("cifar10c-snow", bs=4, **kw)[2].dataset.idxs == numpy_test
    assert D.plasticity_sample("cifar10c-snow", batch_size=4, **kw).idxs == numpy_test
    torch_test = D.split_idxs(20, 42)[1]
    assert D.dataset_splits("cifar10c-snow", fixed_split="torch", **kw)[2].idxs == torch_test
    assert D.dataloaders("cifar10c-snow", bs=4, fixed_split="torch", **kw)[2].dataset.idxs == torch_test
    assert D.plasticity_sample("cifar10c-snow", batch_size=4, fixed_split="torch", **kw).idxs == torch_test
    with pytest.raises(ValueError, match="fixed_split='Numpy' is not one of"): D.dataset_splits("cifar10c-snow", fixed_split="Numpy", **kw)


def restarted_drop_last_loader(items: list, n: int, bs: int) -> list:
    "The authors' target side: a DataLoader(drop_last=True) over the test split, restarted when it runs out."
    out, loader = [], torch.utils.data.DataLoader(items, batch_size=bs, drop_last=True)
    while len(out) < n:
        for batch in loader:
            out += batch.tolist()
            if len(out) >= n: break
    return out[:n]


@pytest.mark.parametrize("size,bs,n", [(4, 4, 9), (7, 2, 15), (16, 8, 16), (17, 8, 40), (30, 7, 100), (9, 1, 20)])
def test_pairing_is_the_restarted_drop_last_loader(size, bs, n):
    items = list(range(500, 500 + size))
    assert D.pairing_idxs(items, n, bs) == restarted_drop_last_loader(items, n, bs)
    assert D.pairing_idxs(items, n, bs, "cycle_all") == [items[k % size] for k in range(n)]


def test_plasticity_sample_pairs_the_test_split_as_the_authors(small_cifar10c):
    kw = dict(root=small_cifar10c, img_size=8, download=False)
    test = D.dataset_splits("cifar10c-snow", **kw)[2].idxs  # 4 images
    assert D.plasticity_sample("cifar10c-snow", 9, batch_size=3, **kw).idxs == restarted_drop_last_loader(test, 9, 3)
    with pytest.raises(ValueError, match=r"cifar10c-snow \(test sample\): the sample has 4 images, fewer than "
                                         r"batch_size=64.*batch_size <= 4 or pairing='cycle_all'"):
        D.plasticity_sample("cifar10c-snow", 9, **kw)
    with pytest.raises(ValueError, match="batch_size=0"): D.plasticity_sample("cifar10c-snow", 9, batch_size=0, **kw)


# ---- the training loader, checkpoint statistics -----------------------------------------------------------------------

def test_training_loader_drops_its_last_partial_batch(tmp_path):
    root = fake_fmnist(tmp_path, 50)  # 40 train images
    dls = D.dataloaders("fmnist", root=root, bs=16, cache=tmp_path)
    assert [len(yb) for _, yb in dls.train] == [16, 16] and [len(yb) for _, yb in dls.valid] == [10]
    kept = D.dataloaders("fmnist", root=root, bs=16, cache=tmp_path, drop_last=False)
    assert sorted(len(yb) for _, yb in kept.train) == [8, 16, 16]
    with pytest.raises(ValueError, match="40 images, fewer than bs=64.*drop_last=False"):
        D.dataloaders("fmnist", root=root, cache=tmp_path)


def test_checkpoint_normalization_uses_the_model_statistics(small_cifar10c):
    import timm
    net = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False, num_classes=10)
    mean, std = net.pretrained_cfg["mean"], net.pretrained_cfg["std"]
    kw = dict(root=small_cifar10c, img_size=8, download=False, batch_size=4)
    imgs = D.plasticity_images("cifar10c-snow", 4, normalize="checkpoint", model=net, **kw)
    raw = D.plasticity_images("cifar10c-snow", 4, normalize="none", **kw)
    assert torch.allclose(imgs, (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    train = D.dataset_splits("cifar10c-snow", root=small_cifar10c, normalize="checkpoint", model=net, download=False)[0]
    assert tuple(train.tfm.transforms[-1].mean) == tuple(mean)
    with pytest.raises(ValueError, match="pass model="):
        D.dataloaders("cifar10c-snow", root=small_cifar10c, normalize="checkpoint", download=False)
    with pytest.raises(ValueError, match="has no pretrained_cfg mean/std"):
        D.plasticity_sample("cifar10c-snow", normalize="checkpoint", model=torch.nn.Linear(2, 2), **kw)


# ---- folder:PATH datasets: a user's own images, in the grid and in finetuning ----

def write_pngs(folder: Path, classes: list[str], per_class: int, size=(20, 16)):
    for k, c in enumerate(classes):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (60 * k, 10 * i, 200)).save(folder / c / f"{i:02d}.png")
    return folder


def test_grid_names_check_accepts_a_folder_and_refuses_a_missing_one(tmp_path):
    from vit_plasticity.grid import GridSpecError, Run, check_names
    folder = write_pngs(tmp_path / "mine", ["a", "b"], 2)
    check_names([Run("finetune", {"dataset": f"folder:{folder}", "model": "tiny-fmnist", "train": "MHA"})])
    with pytest.raises(GridSpecError, match="no such folder; pass an image folder"):
        check_names([Run("plasticity", {"dataset": f"folder:{tmp_path / 'gone'}", "model": "tiny-fmnist"})])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GridSpecError, match="no image files and no sub-folders"):
        check_names([Run("plasticity", {"source": f"folder:{tmp_path / 'empty'}"})])


def test_finetune_on_a_folder_at_the_models_input(tmp_path):
    "RGB PNGs of 2 classes, read grey at 32 px for the tiny ViT (1 channel): 2 steps of MHA, then tested."
    from vit_plasticity.finetune import finetune
    from vit_plasticity.models import load_vit
    name = f"folder:{write_pngs(tmp_path / 'mine', ['ants', 'bees'], 10)}"
    model = load_vit("tiny-fmnist", num_classes=2)
    dls = D.dataloaders(name, bs=4, model=model)
    xb, yb = dls.one_batch()
    sizes = [len(dl.dataset) for dl in dls.loaders]  # 20 -> fixed 16/4 -> 13/3 by the run seed
    assert (tuple(xb.shape), dls.c, sizes) == ((4, 1, 32, 32), 2, [13, 3, 4])
    metrics, history = finetune(model, dls, dls[2], train="MHA", lr=0.01, n_steps=2, warmup_steps=1,
                                eval_period=1, seed=0)
    assert metrics["n_steps"] == 2 and 0 <= metrics["test_acc"] <= 1 and len(history) >= 2, metrics


def finetune_metrics(root: Path, cache: Path, batched: bool) -> tuple[dict, dict]:
    "A short MHA finetuning of the shipped tiny ViT on a fake Fashion-MNIST with noise, its loaders built so."
    from vit_plasticity.finetune import finetune, reset_head, seed_run
    from vit_plasticity.models import load_vit
    net = load_vit("tiny-fmnist")
    seed_run(3)
    dls = D.dataloaders("fmnist-gaussian_noise", root=root, cache=cache, seed=3, bs=8, model=net, batched=batched)
    m, hist = finetune(reset_head(net, dls.c, 3), dls, dls[2], train=["MHA"], lr=0.1, n_steps=12, seed=3,
                       new_head=False, warmup_steps=2, eval_period=3)
    hist = hist.drop(columns=[c for c in hist.columns if "time" in c or "per_s" in c]).fillna(-1.0)
    return {k: v for k, v in m.items() if k not in ("images_per_s", "wall_time_s")}, hist.to_dict("list")


def test_whole_batches_finetune_exactly_as_image_by_image(tmp_path):
    # 64 training images, 8 batches of 8: 12 steps go round them 1.5 times (no partial batch: see the notebook)
    root, cache = fake_fmnist(tmp_path / "fm", 100), tmp_path / "cache"
    assert type(D.dataloaders("fmnist-gaussian_noise", root=root, cache=cache, bs=8).train) is D.ArrayLoader
    assert finetune_metrics(root, cache, True) == finetune_metrics(root, cache, False)


def test_whole_batches_with_workers_and_checkpoint_statistics(tmp_path):
    from vit_plasticity.models import load_vit
    root, net = fake_fmnist(tmp_path, 20), load_vit("tiny-fmnist")
    one = [D.dataloaders("fmnist", root=root, bs=4, normalize="checkpoint", model=net, batched=b)[2].one_batch()
           for b in (True, False)]
    assert torch.equal(one[0][0], one[1][0]) and torch.equal(one[0][1], one[1][1])
    dls = D.dataloaders("fmnist", root=root, bs=4, num_workers=1)
    assert type(dls.train) is D.ArrayLoader and dls.one_batch()[0].shape == (4, 1, 32, 32)
