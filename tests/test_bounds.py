"Property tests of vit_plasticity.bounds: random modules, adversarial pairs, bounds_check, a papermill run."
import json
import math

import pandas as pd
import papermill as pm
import pytest
import timm
import torch
from hypothesis import given, settings, strategies as st
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from vit_plasticity.bounds import (bounds_check, bounds_table, layernorm_bound, linear_bound, mha_bound,
                                   pair_token_stats, plasticity_bounds, token_count)
from vit_plasticity.components import embed
from vit_plasticity.data import plasticity_images
from vit_plasticity.grid import notebooks_dir
from vit_plasticity.models import load_vit
from vit_plasticity.plasticity import layer_summary, measure_plasticity

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny tensors: on a shared CPU, extra threads only wait."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ratio(f, x, y):
    "Largest ‖f(x) − f(y)‖_F / ‖x − y‖_F over the pairs x[k], y[k] (B, N, D)."
    return ((f(x) - f(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).max().item()


def into_ball(z, r):
    "Scale down the tokens of z (…, N, D) whose norm exceeds r."
    return z * (r / z.norm(dim=-1, keepdim=True)).clamp(max=1.0)


def random_attention(heads, head_dim, scale, seed, bias_scale=None):
    "timm Attention, every weight and bias drawn from N(0, scale²) (biases from N(0, bias_scale²) if given)."
    torch.manual_seed(seed)
    attn = Attention(heads * head_dim, num_heads=heads, qkv_bias=True).eval()
    with torch.no_grad():
        for name, p in attn.named_parameters():
            p.normal_(0, scale if bias_scale is None or name.endswith("weight") else bias_scale)
    return attn.requires_grad_(False)


def adversarial_pairs(attn, n, r, steps=25, near=False):
    "Pairs (8, n, d) in the ball of radius r pushed by gradient ascent on MHA's rate of change."
    d = attn.qkv.in_features
    x = into_ball(torch.randn(8, n, d), r).requires_grad_(True)
    start = x.detach() + 0.01 * r * torch.randn(8, n, d) if near else torch.randn(8, n, d)
    y = into_ball(start, r).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.02 * r if near else 0.05 * r)
    for _ in range(steps):
        loss = -((attn(x) - attn(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad(): x.copy_(into_ball(x, r)); y.copy_(into_ball(y, r))
    return x.detach(), y.detach()


@SETTINGS
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4, 8]), n=st.integers(1, 6),
       scale=st.floats(0.05, 1.0), bias_scale=st.floats(0.0, 5.0), r=st.floats(0.1, 5.0),
       seed=st.integers(0, 2**16))
def test_mha_bound_holds_against_adversarial_pairs(heads, head_dim, n, scale, bias_scale, r, seed):
    "Gradient ascent on the rate of change, tokens in the ball of radius r, never beats the bound (biased)."
    attn = random_attention(heads, head_dim, scale, seed, bias_scale)
    x, y = adversarial_pairs(attn, n, r)
    with torch.no_grad(): worst = ratio(attn, x, y)
    assert worst <= mha_bound(attn, r, n)  # the corrected bound: the query bias counted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_bias_breaks_the_paper_formula_not_the_corrected_one(seed):
    "Q = 0 (A = 0), a large query bias: adversarial pairs beat the paper's formula, not the corrected bound."
    attn = random_attention(2, 4, 0.5, seed)
    with torch.no_grad():
        attn.qkv.weight[:8].zero_()  # Q = 0
        attn.qkv.bias[:8].normal_(0, 10.0)  # b_Q: the scores c^T x_j depend on the keys only
    x, y = adversarial_pairs(attn, 4, 1.0, steps=60, near=True)
    with torch.no_grad(): worst = ratio(attn, x, y)
    assert mha_bound(attn, 1.0, 4, qk_bias=False) < worst <= mha_bound(attn, 1.0, 4)


@SETTINGS
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4]), n=st.integers(1, 5),
       scale=st.floats(0.05, 1.0), bias_scale=st.floats(0.0, 5.0), r=st.floats(0.1, 5.0),
       seed=st.integers(0, 2**16))
def test_mha_jacobian_norm_below_bound(heads, head_dim, n, scale, bias_scale, r, seed):
    "The derivation bounds the differential of MHA at every point of the ball: its spectral norm (biases on)."
    attn = random_attention(heads, head_dim, scale, seed, bias_scale)
    d = heads * head_dim
    x = into_ball(torch.randn(1, n, d) * r, r)
    jac = torch.autograd.functional.jacobian(attn, x).reshape(n * d, n * d)
    assert torch.linalg.matrix_norm(jac, ord=2).item() <= mha_bound(attn, r, n)


@SETTINGS
@given(d=st.integers(3, 32), sigma=st.floats(0.05, 3.0), gamma_scale=st.floats(0.1, 10.0),
       seed=st.integers(0, 2**16))
def test_layernorm_bound_under_assumption_and_tight_swap(d, sigma, gamma_scale, seed):
    "d ≥ 3: with d = 2 a (mean, std) leaves two tokens, so pairs can coincide and 0/0 is rounding noise."
    torch.manual_seed(seed)
    ln = nn.LayerNorm(d, eps=1e-6)
    with torch.no_grad(): ln.weight.normal_(0, gamma_scale); ln.bias.normal_()
    mu, sd = torch.randn(64, 4, 1), sigma * (1 + torch.rand(64, 4, 1))

    def moments(z, mu, sd):  # tokens of z with mean mu and population std sd
        zc = z - z.mean(-1, keepdim=True)
        return mu + sd * zc / zc.pow(2).mean(-1, keepdim=True).sqrt()
    x, y = moments(torch.randn(64, 4, d), mu, sd), moments(torch.randn(64, 4, d), mu, sd)
    with torch.no_grad():
        assert ratio(ln, x, y) <= layernorm_bound(ln, sigma) * (1 + 1e-5)
        i = ln.weight.abs().argmax().item(); j = (i + 1) % d
        ln.weight[j] = -ln.weight[i]  # a tie on |γ|: swapping coordinates i, j reaches the bound
        x = moments(torch.randn(1, 4, d), mu[:1], sigma)  # std exactly sigma
        y = x.clone(); y[..., [i, j]] = x[..., [j, i]]
        assert math.isclose(ratio(ln, x, y), layernorm_bound(ln, sigma), rel_tol=1e-4)


@SETTINGS
@given(d_in=st.integers(1, 24), d_out=st.integers(1, 24), seed=st.integers(0, 2**16), data=st.data())
def test_linear_bound_holds_and_is_reached(d_in, d_out, seed, data):
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out)
    k = data.draw(st.integers(1, d_in))
    probe = lambda z: lin(nn.functional.pad(z, (0, d_in - k)))  # only the first k inputs vary
    x, y = torch.randn(32, 5, k), torch.randn(32, 5, k)
    with torch.no_grad():
        tol = 1 + 1e-5
        assert ratio(probe, x, y) <= linear_bound(lin, in_features=k) * tol <= linear_bound(lin) * tol
        v1 = torch.linalg.svd(lin.weight[:, :k]).Vh[0]
        y_tight = x + torch.randn(32, 5, 1) * v1
        assert math.isclose(ratio(probe, x, y_tight), linear_bound(lin, k), rel_tol=1e-4)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "deit3_small_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_family_token_count_and_bounds(name):
    "n matches the embedding output, and every block gets five finite positive bounds, across timm's ViTs."
    model = timm.create_model(name, pretrained=False, num_classes=10, depth=2, img_size=56).eval()
    with torch.no_grad(): n = embed(model, torch.randn(1, 3, 56, 56)).shape[1]
    assert token_count(model) == n
    for kw in ({}, {"paper_compat": True}, {"qk_bias": True, "r": 3.0, "sigma": 0.5}):
        b = plasticity_bounds(model, **kw)
        assert len(b) == 10 and b["bound"].gt(0).all() and b["bound"].map(math.isfinite).all()


def test_bounds_check_flags_a_violated_bound():
    "A random ViT's bounds hold on its measured plasticity; one FC1 scaled up afterwards is flagged, alone."
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=3)
    a, b = torch.randn(2, 24, 3, 32, 32).unbind()
    stats = pair_token_stats(vit, a, b, batch_size=8)
    bounds = bounds_table(vit, "m", stats["r_rms"], stats["r_max"], stats["sigma_min"])
    measure = lambda: measure_plasticity(vit, a, b, batch_size=8, progress=False)
    measured = lambda: layer_summary(measure()).assign(protocol="paper", model="m")
    check = bounds_check(measured(), bounds)
    assert check.loc[check["rigorous"], "holds"].all() and check["rigorous"].sum() == 3 * 3
    with torch.no_grad(): vit.blocks[1].mlp.fc1.weight.mul_(10.0)
    check = bounds_check(measured(), bounds)
    failed = check[check["rigorous"] & ~check["holds"]]
    assert list(zip(failed["layer"], failed["component"])) == [(1, "FC1")]


@pytest.mark.parametrize("arg, bad", [("n_pairs", True), ("n_pairs", 0), ("batch_size", 2.0), ("batch_size", -8)])
def test_pair_token_stats_refuses_what_measure_plasticity_refuses(arg, bad):
    "The same positive-integer check as `measure_plasticity` (a bool is not a count), before any pair is read."
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=3)
    a = torch.randn(4, 3, 32, 32)
    for measure in (pair_token_stats, measure_plasticity):
        with pytest.raises(ValueError, match=f"{arg} must be a positive integer, got {bad!r}"):
            measure(vit, a, a, **{arg: bad})


def test_plasticity_run_writes_bounds_that_hold(tmp_path, monkeypatch):
    "papermill, tiny ViT: bounds.csv from the run's own pairs; corrected FC1, FC2, MHA hold on every pair."
    monkeypatch.setenv("VITP_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = tmp_path / "pl"
    run_dir.mkdir()
    parameters = dict(run_dir=str(run_dir), dataset="digits", n_pairs=96, batch_size=32, protocols="paper")
    pm.execute_notebook(str(notebooks_dir() / "plasticity.ipynb"), str(run_dir / "notebook.ipynb"),
                        progress_bar=False, parameters=parameters)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    layers, bounds = pd.read_csv(run_dir / "layers.csv"), pd.read_csv(run_dir / "bounds.csv")
    assert list(bounds.columns) == ["model", "layer", "component", "bound", "variant"]
    net, src = load_vit("tiny-fmnist"), plasticity_images("fmnist", 96)
    tgt = plasticity_images("digits")[:96]
    with torch.no_grad(): x, y = embed(net, src), embed(net, tgt)  # the run's pairs: 96 < 359, image by image
    moving = (x != y).any(-1)
    assert math.isclose(metrics["r_max"], torch.cat([x, y]).norm(dim=-1).max().item(), rel_tol=1e-6)
    sigma = torch.cat([x[moving], y[moving]]).std(-1, unbiased=False).min().item()
    assert math.isclose(metrics["sigma_min"], sigma, rel_tol=1e-5)
    pairs = measure_plasticity(net, src, tgt, batch_size=96, progress=False)
    worst = pairs.groupby(["layer", "component"])["ratio"].max()
    corrected = bounds[bounds["variant"] == "corrected"].set_index(["layer", "component"])["bound"]
    for layer in range(len(net.blocks)):
        fc1 = torch.linalg.matrix_norm(net.blocks[layer].mlp.fc1.weight.detach(), ord=2).item()
        assert math.isclose(corrected[layer, "FC1"], fc1, rel_tol=1e-5)
        for comp in ("FC1", "FC2", "MHA"): assert worst[layer, comp] <= corrected[layer, comp]
    pd.testing.assert_series_equal(layers["mean"], layer_summary(pairs)["mean"], rtol=1e-5)
    check = bounds_check(layers.assign(model="tiny-fmnist", dataset="digits"), bounds)
    assert check["rigorous"].sum() == 3 * len(net.blocks) and check.loc[check["rigorous"], "holds"].all()
