"Every synthetic copy, in its real format, goes through the real loaders, splits, transforms and pairs."
import json, socket, time
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_plasticity import data as D
from vit_plasticity import synthetic as S

# Expected sizes of the raw parts and of the train / valid / test splits: official (train 80/20, official
# test), fixed (numpy 80/20 train/test, then 80/20), given (the official three sets).
C10C = [f"cifar10c-{c}" for c in D.CIFAR10C_CORRUPTIONS]
RAW = {"cifar10": (50, 20), "cifar100": (200, 100), **{k: (100,) for k in C10C}, "domainnet-clipart": (345,),
       "domainnet-sketch": (345,), "flowers102": (102, 102, 102), "pet": (74, 37), "imagenet-val": (1000,),
       "imagenette": (20, 20)}
SPLITS = {"cifar10": (40, 10, 20), "cifar100": (160, 40, 100), **{k: (64, 16, 20) for k in C10C},
          "domainnet-clipart": (221, 55, 69), "domainnet-sketch": (221, 55, 69),
          "flowers102": (102, 102, 102), "pet": (59, 15, 37), "imagenet-val": (640, 160, 200),
          "imagenette": (16, 4, 20)}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs): raise OSError("network disabled in tests")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    "Every paper dataset's copy, written once for this module."
    t0 = time.perf_counter()
    root = S.ensure_synthetic(root=tmp_path_factory.mktemp("synthetic"))
    assert time.perf_counter() - t0 < 60, "generating the copies should take seconds"
    return root


def rule_sizes(rule: str, raw: tuple[int, ...]) -> tuple[int, int, int]:
    "Train, valid and test sizes that a split rule gives for raw parts of these sizes, computed here."
    if rule == "given": return raw
    rest, test = (raw[0], raw[1]) if rule == "official" else (int(0.8 * raw[0]), raw[0] - int(0.8 * raw[0]))
    return round(0.8 * rest), rest - round(0.8 * rest), test


def test_every_paper_dataset_has_a_copy():
    assert set(S.SYNTHETIC_WRITERS) == set(D.PAPER_DATASETS) == set(SPLITS)


@pytest.mark.parametrize("name", list(D.PAPER_DATASETS))
def test_copy_through_the_real_loaders(root, name):
    spec = D.dataset_spec(name)
    parts = D.raw_parts(name, root, download=False)
    assert tuple(map(len, parts)) == RAW[name]
    labels = [y for p in parts for y in (p[i][1] for i in range(len(p)))]
    assert sorted(set(labels)) == list(range(spec.n_classes))  # every class, and no other label
    splits = D.dataset_splits(name, root, download=False)  # the paper's transforms, 224 pixels
    assert tuple(map(len, splits)) == SPLITS[name] == rule_sizes(spec.split, RAW[name])
    for split in splits:
        x, y = split[len(split) - 1]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and 0 <= y < spec.n_classes
    dls = D.dataloaders(name, root, bs=8, download=False)
    xb, yb = dls.one_batch()
    assert xb.shape == (8, 3, 224, 224) and yb.shape == (8,) and dls.c == spec.n_classes
    pairs = D.plasticity_sample(name, 20, root=root, batch_size=8, download=False)
    sample = list(range(len(parts[0]))) if spec.sample == "all" else splits[2].idxs
    assert pairs.idxs == D.pairing_idxs(sample, 20, 8) and pairs[19][0].shape == (3, 224, 224)


@pytest.mark.parametrize("n_classes", [10, 100])
def test_torchvision_reads_the_cifar_copies(root, monkeypatch, n_classes):
    "The copies are the real format: torchvision's class (md5 check aside) reads the same images and labels."
    import torchvision.datasets.cifar as tvc
    monkeypatch.setattr(tvc, "check_integrity", lambda path, md5=None: Path(path).is_file())
    cls = {10: tvc.CIFAR10, 100: tvc.CIFAR100}[n_classes]
    for ours, train in zip(D.load_cifar(root, n_classes), (True, False)):
        theirs = cls(str(root), train=train)
        assert np.array_equal(ours.images, theirs.data) and ours.labels.tolist() == theirs.targets


def test_torchvision_reads_the_flowers_copy(root, monkeypatch):
    import torchvision.datasets.flowers102 as tvf
    monkeypatch.setattr(tvf, "check_integrity", lambda path, md5=None: Path(path).is_file())
    for ours, split in zip(D.load_flowers102(root), ("train", "val", "test")):
        theirs = tvf.Flowers102(str(root), split=split)
        assert ours.files == theirs._image_files and ours.labels == theirs._labels


def test_cifar10c_copies_share_their_labels(root):
    labels = np.load(root / "CIFAR-10-C" / "labels.npy")
    for c in D.CIFAR10C_CORRUPTIONS:
        (ds,) = D.load_cifar10c(root, c, severity=1)
        assert ds.labels.tolist() == labels[:100].tolist()


def test_a_half_written_copy_is_written_again(tmp_path, monkeypatch):
    def crash(root, seed):
        S.write_cifar(root, 10, seed)
        (Path(root) / "cifar-10-batches-py" / "test_batch").write_bytes(b"half")
        raise KeyboardInterrupt  # killed before the marker
    monkeypatch.setitem(S.SYNTHETIC_WRITERS, "cifar10", crash)
    with pytest.raises(KeyboardInterrupt): S.ensure_synthetic("cifar10", tmp_path)
    assert not (tmp_path / ".synthetic" / "cifar10.json").exists()
    monkeypatch.undo()
    S.ensure_synthetic("cifar10", tmp_path)
    assert [len(p) for p in D.load_cifar(tmp_path, 10)] == [50, 20]
    record = json.loads((tmp_path / ".synthetic" / "cifar10.json").read_text())
    assert record["version"] == S.SYNTHETIC_VERSION and record["seed"] == 0 and record["seconds"] >= 0


def test_a_complete_copy_is_not_written_again_unless_its_version_differs(tmp_path, monkeypatch):
    S.ensure_synthetic(["pet"], tmp_path)
    calls = []
    monkeypatch.setitem(S.SYNTHETIC_WRITERS, "pet", lambda root, seed: calls.append(seed))
    S.ensure_synthetic(["pet"], tmp_path)
    assert calls == []
    marker = tmp_path / ".synthetic" / "pet.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "version": S.SYNTHETIC_VERSION - 1}))
    S.ensure_synthetic(["pet"], tmp_path)
    assert calls == [0]


def test_default_root_and_bad_names(tmp_path, monkeypatch):
    monkeypatch.setenv("VITP_CACHE", str(tmp_path))
    assert S.synthetic_root() == tmp_path / "rehearsal" / f"v{S.SYNTHETIC_VERSION}"
    assert S.ensure_synthetic("cifar10c-snow") == S.synthetic_root()
    assert (S.synthetic_root() / "CIFAR-10-C" / "snow.npy").is_file()
    with pytest.raises(ValueError, match=r"no copy of \['fmnist'\]"): S.ensure_synthetic(["fmnist"])


def test_writers_are_deterministic(tmp_path):
    a, b = (S.write_synthetic("cifar100", tmp_path / k, seed=3) for k in "ab")
    assert (a / "cifar-100-python" / "train").read_bytes() == (b / "cifar-100-python" / "train").read_bytes()
    c = S.write_synthetic("cifar100", tmp_path / "c", seed=4)
    assert (a / "cifar-100-python" / "train").read_bytes() != (c / "cifar-100-python" / "train").read_bytes()
