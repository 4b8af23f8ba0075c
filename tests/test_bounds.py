"Property tests of vit_plasticity.bounds: many random modules and adversarial pairs, too slow for the notebook."
import math

import pytest
import timm
import torch
from hypothesis import given, settings, strategies as st
from timm.models.vision_transformer import Attention
from torch import nn

from vit_plasticity.bounds import layernorm_bound, linear_bound, mha_bound, plasticity_bounds, token_count
from vit_plasticity.components import embed

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


def random_attention(heads, head_dim, scale, seed):
    torch.manual_seed(seed)
    attn = Attention(heads * head_dim, num_heads=heads, qkv_bias=True).eval()
    with torch.no_grad():
        for p in attn.parameters(): p.normal_(0, scale)
    return attn.requires_grad_(False)


@SETTINGS
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4, 8]), n=st.integers(1, 6),
       scale=st.floats(0.05, 1.0), r=st.floats(0.1, 5.0), seed=st.integers(0, 2**16))
def test_mha_bound_holds_against_adversarial_pairs(heads, head_dim, n, scale, r, seed):
    "Gradient ascent on the rate of change, tokens kept in the ball of radius r, never beats the bound (biases on)."
    attn = random_attention(heads, head_dim, scale, seed)
    d = heads * head_dim
    x = into_ball(torch.randn(8, n, d), r).requires_grad_(True)
    y = into_ball(torch.randn(8, n, d), r).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.05 * r)
    for _ in range(25):
        loss = -((attn(x) - attn(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad(): x.copy_(into_ball(x, r)); y.copy_(into_ball(y, r))
    with torch.no_grad(): worst = ratio(attn, x, y)
    assert worst <= mha_bound(attn, r, n, qk_bias=True)


@SETTINGS
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4]), n=st.integers(1, 5),
       scale=st.floats(0.05, 1.0), r=st.floats(0.1, 5.0), seed=st.integers(0, 2**16))
def test_mha_jacobian_norm_below_bound(heads, head_dim, n, scale, r, seed):
    "The derivation bounds the differential of MHA at every point of the ball: check its spectral norm."
    attn = random_attention(heads, head_dim, scale, seed)
    d = heads * head_dim
    x = into_ball(torch.randn(1, n, d) * r, r)
    jac = torch.autograd.functional.jacobian(attn, x).reshape(n * d, n * d)
    assert torch.linalg.matrix_norm(jac, ord=2).item() <= mha_bound(attn, r, n, qk_bias=True)


@SETTINGS
@given(d=st.integers(3, 32), sigma=st.floats(0.05, 3.0), gamma_scale=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
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
        assert ratio(probe, x, y) <= linear_bound(lin, in_features=k) * (1 + 1e-5) <= linear_bound(lin) * (1 + 1e-5)
        v1 = torch.linalg.svd(lin.weight[:, :k]).Vh[0]
        assert math.isclose(ratio(probe, x, x + torch.randn(32, 5, 1) * v1), linear_bound(lin, k), rel_tol=1e-4)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "deit3_small_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_family_token_count_and_bounds(name):
    "n matches the embedding output, and every block gets five finite positive bounds, across timm's ViT family."
    model = timm.create_model(name, pretrained=False, num_classes=10, depth=2, img_size=56).eval()
    with torch.no_grad(): n = embed(model, torch.randn(1, 3, 56, 56)).shape[1]
    assert token_count(model) == n
    for kw in ({}, {"paper_compat": True}, {"qk_bias": True, "r": 3.0, "sigma": 0.5}):
        b = plasticity_bounds(model, **kw)
        assert len(b) == 10 and b["bound"].gt(0).all() and b["bound"].map(math.isfinite).all()
