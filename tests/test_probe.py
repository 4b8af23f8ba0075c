"Linear-probe checks beyond the notebook: every representation in every block, fastai loaders, dropout models."
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from fastai.data.load import DataLoader as FastaiDataLoader
from torch.utils.data import DataLoader, TensorDataset

from vit_plasticity.components import embed
from vit_plasticity.data import Split
from vit_plasticity.probe import (extract_features, layer_features, layerwise_probe, linear_probe,
                                  pool_normalise, probe_train_split)


def tiny_vit(**kwargs):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=4, in_chans=1, **kwargs)


def tiny_task(n, seed=0):
    textures = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return TensorDataset(textures[y].repeat(1, 1, 4, 4) + torch.randn(n, 1, 32, 32, generator=g), y)


@torch.no_grad()
def by_hand(model, x):
    "Every component's output in every block, from the block equations written out."
    h, out = embed(model, x), {}
    for i, blk in enumerate(model.blocks):
        ln1 = blk.norm1(h); mha = blk.attn(ln1); mid = h + mha
        ln2 = blk.norm2(mid); fc1 = blk.mlp.fc1(ln2); fc2 = blk.mlp.fc2(F.gelu(fc1)); h = mid + fc2
        out[i] = dict(LN1=ln1, MHA=mha, LN2=ln2, FC1=fc1, FC2=fc2, residual=h)
    return out


@pytest.mark.parametrize("representation", ["residual", "LN1", "MHA", "mha", "LN2", "FC1", "FC2"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_features_match_the_block_equations(representation, layer):
    torch.manual_seed(0)
    model, ds = tiny_vit().eval(), tiny_task(20)
    X, y = extract_features(model, DataLoader(ds, batch_size=8), representation, layer)  # 8 + 8 + 4: ragged batches
    key = {"mha": "MHA"}.get(representation, representation)
    expected = pool_normalise(by_hand(model, ds.tensors[0])[range(2)[layer]][key])
    np.testing.assert_allclose(X, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(y, ds.tensors[1].numpy())
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_emb_and_fastai_loaders():
    torch.manual_seed(0)
    model, ds = tiny_vit().eval(), tiny_task(12)
    X, y = extract_features(model, FastaiDataLoader(ds, bs=5), "emb")
    np.testing.assert_allclose(X, pool_normalise(embed(model, ds.tensors[0])).detach().numpy(), atol=1e-5)
    assert X.dtype == np.float32 and y.tolist() == ds.tensors[1].tolist()


def test_eval_mode_makes_features_deterministic():
    "Dropout is off during extraction, and the model's training mode is restored."
    torch.manual_seed(0)
    model, dl = tiny_vit(drop_rate=0.5, attn_drop_rate=0.5, proj_drop_rate=0.5).train(), DataLoader(tiny_task(8), batch_size=8)
    a, b = extract_features(model, dl)[0], extract_features(model, dl)[0]
    np.testing.assert_array_equal(a, b)
    assert model.training


def test_one_forward_pass_for_all_layers():
    torch.manual_seed(0)
    model, dl = tiny_vit().eval(), DataLoader(tiny_task(24), batch_size=8)
    calls = []
    hook = model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    feats, _ = layer_features(model, dl, "MHA", layers=[0, -1])
    hook.remove()
    assert len(calls) == 3 and sorted(feats) == [0, 1]


def test_probe_separates_and_reports():
    torch.manual_seed(0)
    model = tiny_vit().eval()
    train_dl, test_dl = DataLoader(tiny_task(64, seed=1), batch_size=16), DataLoader(tiny_task(40, seed=2), batch_size=16)
    res = linear_probe(model, train_dl, test_dl, representation="mha")
    assert res["test_acc"] >= 0.9 and res["representation"] == "MHA" and res["layer"] == 1
    assert (res["n_train"], res["n_test"], res["dim"]) == (64, 40, 192)
    df = layerwise_probe(model, train_dl, test_dl, layers=[-1, 0])
    assert df.layer.tolist() == [1, 0] and (df.test_acc >= 0.9).all()


def test_unknown_representation():
    with pytest.raises(ValueError, match="valid: residual"):
        extract_features(tiny_vit(), DataLoader(tiny_task(4), batch_size=4), "attention")


def test_training_features_come_through_the_split_transform_asked_for():
    "'augmented' reads the train split through its own (training) transform, 'clean' through the eval one."
    torch.manual_seed(0)
    model, ds = tiny_vit().eval(), tiny_task(20)
    flip = lambda x: x.flip(-1)  # a deterministic stand-in for the training transform
    train = Split(ds, range(20), flip)
    feats = lambda split: extract_features(model, DataLoader(split, batch_size=8))[0]
    images = ds.tensors[0]
    expected = lambda x: pool_normalise(by_hand(model, x)[1]["residual"]).numpy()  # the last block by hand
    np.testing.assert_allclose(feats(probe_train_split(train, None)), expected(images.flip(-1)), atol=1e-5)
    np.testing.assert_allclose(feats(probe_train_split(train, None, "clean")), expected(images), atol=1e-5)


def test_augmented_features_are_seeded_random_views():
    torch.manual_seed(0)
    model, ds = tiny_vit().eval(), tiny_task(16)
    train = Split(ds, range(16), lambda x: x + torch.randn_like(x))  # random, from torch's global generator
    def feats(seed):
        torch.manual_seed(seed)
        return extract_features(model, DataLoader(train, batch_size=8))[0]
    np.testing.assert_array_equal(feats(1), feats(1))
    assert np.abs(feats(1) - feats(2)).max() > 1e-3


def test_unknown_train_features():
    with pytest.raises(ValueError, match="valid: augmented, clean"):
        probe_train_split(Split(tiny_task(4), range(4)), None, "eval")
