"""Every supported architecture family, small and random, against the references the timm ViT is checked with.

One small model per layout: timm's ViT (LayerScale, a register token), EVA-02 (RoPE, separate q/k/v, SwiGLU
with the MLP's norm, LayerScale), EVA with fused qkv and a packed gated MLP, BEiT (relative position bias per
block, or shared), and, where `transformers` is installed, Hugging Face's ViT, DINOv2 (LayerScale; plain or
SwiGLU MLP) and CLIP (with and without classifier). Checked: the family found by structure; the embedding and
every component map against the model's own forward pass; `measure_plasticity` against `naive_plasticity` (the
notebook's reference) under both protocols; `set_trainable` against hand counts; finetuning, the new head, the
probe's features; the bounds where the attention is plain softmax, and their refusal elsewhere."""
import copy

import numpy as np
import pytest
import timm
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from timm.models.beit import Beit
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import TensorDataset

from vit_plasticity.bounds import (NotPlainSoftmaxError, head_weights, mha_bound, pair_token_stats,
                                   plasticity_bounds)
from vit_plasticity.components import (COMPONENTS, HEAD, block_components, check_vit, embed, family_of,
                                       n_blocks, parts_of, set_trainable)
from vit_plasticity.finetune import evaluate, finetune, reset_head
from vit_plasticity.plasticity import PROTOCOLS, _captured, measure_plasticity, naive_plasticity
from vit_plasticity.probe import extract_features, layer_features, pool_normalise

try: import transformers
except ImportError: transformers = None

IMG, N_CLASSES = 16, 3
ARCH = dict(img_size=IMG, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=N_CLASSES)
HF = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=IMG, patch_size=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny tensors: on a shared CPU, extra threads only wait."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hf(kind):
    "A small Hugging Face model of `kind`."
    tr = transformers
    if kind == "hf_vit":
        return tr.ViTForImageClassification(tr.ViTConfig(intermediate_size=32, num_labels=3, **HF))
    if kind == "hf_vit_base": return tr.ViTModel(tr.ViTConfig(intermediate_size=32, **HF))
    if kind == "hf_dinov2":
        return tr.Dinov2ForImageClassification(tr.Dinov2Config(mlp_ratio=2, num_labels=3, **HF))
    if kind == "hf_dinov2_swiglu":
        return tr.Dinov2Model(tr.Dinov2Config(mlp_ratio=4, use_swiglu_ffn=True, **HF))
    if kind == "hf_clip":
        return tr.CLIPForImageClassification(tr.CLIPConfig(vision_config=dict(intermediate_size=32, **HF),
                                                           num_labels=3))
    return tr.CLIPVisionModel(tr.CLIPVisionConfig(intermediate_size=32, **HF))


TIMM = {
    "timm_vit_ls": lambda: VisionTransformer(init_values=0.5, reg_tokens=1, **ARCH),
    "timm_eva02": lambda: Eva(use_rot_pos_emb=True, swiglu_mlp=True, scale_mlp=True, qkv_fused=False,
                              init_values=0.5, mlp_ratio=4 * 2 / 3, ref_feat_shape=(4, 4), **ARCH),
    "timm_eva_fused": lambda: Eva(use_rot_pos_emb=True, swiglu_mlp=True, qkv_fused=True, num_reg_tokens=1,
                                  mlp_ratio=4 * 2 / 3, **ARCH),
    "timm_beit": lambda: Beit(use_rel_pos_bias=True, init_values=0.5, **ARCH),
    "timm_beit_shared": lambda: Beit(use_shared_rel_pos_bias=True, use_abs_pos_emb=False, init_values=0.5,
                                     **ARCH),
}
HF_KINDS = ("hf_vit", "hf_vit_base", "hf_dinov2", "hf_dinov2_swiglu", "hf_clip", "hf_clip_vision")
FAMILY = {"timm_vit_ls": "timm VisionTransformer", "timm_eva02": "timm Eva", "timm_eva_fused": "timm Eva",
          "timm_beit": "timm Beit", "timm_beit_shared": "timm Beit", "hf_vit": "Hugging Face ViT",
          "hf_vit_base": "Hugging Face ViT", "hf_dinov2": "Hugging Face DINOv2",
          "hf_dinov2_swiglu": "Hugging Face DINOv2", "hf_clip": "Hugging Face CLIP",
          "hf_clip_vision": "Hugging Face CLIP"}
NEEDS_HF = pytest.mark.skipif(transformers is None, reason="transformers (an optional dependency) is missing")
KINDS = [*TIMM, *[pytest.param(k, marks=NEEDS_HF) for k in HF_KINDS]]
CLASSIFIERS = [k for k in KINDS if getattr(k, "values", (k,))[0] not in ("hf_vit_base", "hf_dinov2_swiglu",
                                                                          "hf_clip_vision")]


def small_model(kind):
    "A small random model of `kind`, eval mode, its biases, norms and layer scales moved (so they count)."
    torch.manual_seed(0)
    model = TIMM[kind]() if kind in TIMM else _hf(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            moved = ("bias", "norm", "gamma", "lambda", "ls1", "ls2", "relative_position")
            if any(m in name for m in moved): p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def images(n, seed):
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_the_family_is_found_by_structure(kind):
    model = small_model(kind)
    assert family_of(model).name == FAMILY[kind] and check_vit(model) is model and n_blocks(model) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_embed_is_what_the_model_feeds_its_first_block(kind):
    model, xb, seen = small_model(kind), images(3, 1), []
    fam = family_of(model)
    hook = fam.blocks(model)[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    with torch.no_grad():
        fam.features(model, xb)
        hook.remove()
        torch.testing.assert_close(embed(model, xb), seen[0])


@pytest.mark.parametrize("kind", KINDS)
def test_every_component_map_is_what_the_forward_pass_computes(kind):
    "f(input) = output for what the model's own pass shows (RoPE, position bias, scale, tuple outputs)."
    model = small_model(kind)
    with torch.no_grad():
        seen = _captured(model, images(3, 2))
        for l in range(n_blocks(model)):
            for name, f in block_components(model, l).items():
                x, out = seen[l, name]
                torch.testing.assert_close(f(x), out, rtol=1e-5, atol=1e-5)


def block_outputs(model, x) -> dict[int, torch.Tensor]:
    "Each block's output in the model's own forward pass, read by hooks on the blocks."
    outs, blocks = {}, family_of(model).blocks(model)
    take = lambda i: lambda m, a, out: outs.__setitem__(i, out[0] if isinstance(out, tuple) else out)
    hooks = [blk.register_forward_hook(take(i)) for i, blk in enumerate(blocks)]
    with torch.no_grad(): family_of(model).features(model, x)
    for h in hooks: h.remove()
    return outs


@pytest.mark.parametrize("kind", KINDS)
def test_mha_and_fc2_are_the_branches_the_residual_stream_receives(kind):
    "h' = h + MHA and block output = h' + FC2, LayerScale included: the maps are the residual branches."
    model, x = small_model(kind), images(3, 7)
    outs = block_outputs(model, x)
    with torch.no_grad(): seen = _captured(model, x)
    for l in range(n_blocks(model)):
        h, h1 = seen[l, "LN1"][0], seen[l, "LN2"][0]
        torch.testing.assert_close(h + seen[l, "MHA"][1], h1)
        torch.testing.assert_close(h1 + seen[l, "FC2"][1], outs[l])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
def test_measure_plasticity_matches_the_naive_reference(kind, protocol):
    "The estimator (shortcuts (4)-(6), chunks, one forward pass of [a; b]) against the direct computation."
    model, a, b = small_model(kind), images(5, 3), images(5, 4)
    ref = naive_plasticity(model, a, b, protocol)
    assert len(ref) == 5 * 2 * 5 and ref["ratio"].gt(0).all()
    for bs in (2, 64):
        got = measure_plasticity(model, a, b, protocol, batch_size=bs, progress=False)
        m = got.merge(ref, on=["pair", "layer", "component"], suffixes=("", "_ref"), validate="one_to_one")
        assert len(m) == len(ref)
        for col in ("d_in", "d_out", "ratio"):
            np.testing.assert_allclose(m[col], m[col + "_ref"], rtol=1e-4)  # fp32 rounding of d_out


def _params(*modules_or_tensors) -> int:
    "Number of parameters of modules and parameter tensors (None ignored)."
    n = 0
    for m in modules_or_tensors:
        if isinstance(m, nn.Module): n += sum(p.numel() for p in m.parameters())
        elif isinstance(m, torch.Tensor): n += m.numel()
    return n


def hand_count(kind, model) -> dict[str, int]:
    "Parameters per component, counted module by module from each family's own attribute names."
    if kind.startswith("timm"):
        b = model.blocks
        mlp1 = lambda blk: blk.mlp.fc1 if hasattr(blk.mlp, "fc1") else [blk.mlp.fc1_g, blk.mlp.fc1_x]
        ls = lambda blk, i: (getattr(blk, f"ls{i}", None), getattr(blk, f"gamma_{i}", None))
        flat = lambda xs: [y for x in xs for y in (x if isinstance(x, (list, tuple)) else [x])]
        emb = [model.patch_embed, model.cls_token, getattr(model, "reg_token", None), model.pos_embed,
               *[getattr(model, a, None) for a in ("norm_pre", "rel_pos_bias", "rope")]]
        return {"emb": _params(*emb), "LN1": _params(*[x.norm1 for x in b]),
                "MHA": _params(*flat([(x.attn, *ls(x, 1)) for x in b])),
                "LN2": _params(*[x.norm2 for x in b]),
                "FC1": _params(*flat([mlp1(x) for x in b])),
                "FC2": _params(*flat([(x.mlp.fc2, x.mlp.norm, *ls(x, 2)) for x in b])),
                HEAD: _params(model.norm, model.fc_norm, getattr(model, "attn_pool", None), model.head)}
    body = family_of(model).body(model)
    head = [getattr(model, "classifier", None)]
    if kind.startswith("hf_vit"):
        L = body.layers
        return {"emb": _params(body.embeddings), "LN1": _params(*[l.layernorm_before for l in L]),
                "MHA": _params(*[l.attention for l in L]), "LN2": _params(*[l.layernorm_after for l in L]),
                "FC1": _params(*[l.mlp.fc1 for l in L]), "FC2": _params(*[l.mlp.fc2 for l in L]),
                HEAD: _params(body.layernorm, body.pooler, *head)}
    if kind.startswith("hf_dinov2"):
        L = body.encoder.layer
        fc1 = lambda l: [l.mlp.fc1] if hasattr(l.mlp, "fc1") else [l.mlp.gate_proj, l.mlp.up_proj]
        fc2 = lambda l: l.mlp.fc2 if hasattr(l.mlp, "fc2") else l.mlp.down_proj
        return {"emb": _params(body.embeddings), "LN1": _params(*[l.norm1 for l in L]),
                "MHA": _params(*[l.attention for l in L], *[l.layer_scale1 for l in L]),
                "LN2": _params(*[l.norm2 for l in L]), "FC1": _params(*[m for l in L for m in fc1(l)]),
                "FC2": _params(*[fc2(l) for l in L], *[l.layer_scale2 for l in L]),
                HEAD: _params(body.layernorm, *head)}
    L = body.encoder.layers
    return {"emb": _params(body.embeddings, body.pre_layrnorm), "LN1": _params(*[l.layer_norm1 for l in L]),
            "MHA": _params(*[l.self_attn for l in L]), "LN2": _params(*[l.layer_norm2 for l in L]),
            "FC1": _params(*[l.mlp.fc1 for l in L]), "FC2": _params(*[l.mlp.fc2 for l in L]),
            HEAD: _params(body.post_layernorm, *head)}


@pytest.mark.parametrize("kind", KINDS)
def test_set_trainable_counts_match_a_hand_count(kind):
    model = small_model(kind)
    hand = hand_count(kind, model)
    assert sum(hand.values()) == _params(model) and all(hand[c] > 0 for c in COMPONENTS)
    for comp in COMPONENTS:
        table = set_trainable(model, comp)["trainable"]
        assert table[comp] == hand[comp] and table["total"] == hand[comp] + hand[HEAD], comp
    assert set_trainable(model, "full").loc["total", "trainable"] == _params(model)


@pytest.mark.parametrize("kind", KINDS)
def test_what_is_measured_is_what_is_trained(kind):
    "Each map's parameters (LayerScale included) are the component's, in its block; the only other trained"
    " one is the MLP's own norm, which feeds FC2 and trains with it."
    model = small_model(kind)
    ids = {id(p): n for n, p in model.named_parameters()}
    for l in range(n_blocks(model)):
        for comp, f in block_components(model, l).items():
            parts, scale = parts_of(f)
            measured = {ids[id(p)] for part in parts for p in part.parameters()}
            measured |= set() if scale is None else {ids[id(scale)]}
            set_trainable(model, comp, layers=[l], train_head=False)
            trained = {n for n, p in model.named_parameters() if p.requires_grad}
            assert measured <= trained and all(".mlp.norm." in n for n in trained - measured), (comp, trained)


def tiny_task(n, seed):
    "Noise images of class c with channel c brightened."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, IMG, IMG, generator=g)
    x[torch.arange(n), y] += 1.0
    return TensorDataset(x, y)


def tiny_dls():
    return DataLoaders(DataLoader(tiny_task(16, 1), bs=8, shuffle=True, drop_last=True),
                       DataLoader(tiny_task(8, 2), bs=8))


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_finetuning_trains_only_the_chosen_component_and_a_new_head(kind):
    model = small_model(kind)
    before = copy.deepcopy(model.state_dict())
    m, hist = finetune(model, tiny_dls(), DataLoader(tiny_task(8, 3), bs=8), "MHA", lr=0.1, n_steps=2,
                       warmup_steps=1, eval_period=2, seed=0)
    assert m["status"] == "ok" and m["steps_done"] == 2 and len(hist) == 2
    head = family_of(model).component_of
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    mha = {n for n in changed if head(n)[0] == "MHA"}
    assert mha and {head(n)[0] for n in changed} <= {"MHA", HEAD}
    assert m["test_acc"] == evaluate(model, DataLoader(tiny_task(8, 3), bs=8))[1]
    fresh = reset_head(small_model(kind), N_CLASSES, seed=0)
    torch.manual_seed(0)
    width = family_of(fresh).head_width(fresh)
    ref = nn.Linear(width, N_CLASSES)  # PyTorch's default init from seed 0: the head finetune started from
    new = fresh.head if kind.startswith("timm") else fresh.classifier
    assert torch.equal(new.weight, ref.weight) and torch.equal(new.bias, ref.bias)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=NEEDS_HF) for k in ("hf_vit_base", "hf_clip_vision")])
def test_a_model_without_classifier_is_refused_with_its_classifier_class(kind):
    name = "ViTForImageClassification" if "vit" in kind else "CLIPForImageClassification"
    model = small_model(kind)
    with pytest.raises(ValueError, match=f"no classification head.*{name}"):
        finetune(model, tiny_dls(), DataLoader(tiny_task(8, 3), bs=8), "MHA", n_steps=2, eval_period=2)
    with pytest.raises(TypeError, match=f"no classifier to replace.*{name}"):
        reset_head(model, N_CLASSES)


@pytest.mark.parametrize("kind", KINDS)
def test_probe_features_are_the_blocks_and_components_outputs(kind):
    "The residual stream (forward_intermediates / hidden states) is each block's output; a component's output"
    " is the naive reference's capture."
    model, ds = small_model(kind), tiny_task(6, 4)
    outs = block_outputs(model, ds.tensors[0])
    feats, y = layer_features(model, DataLoader(ds, bs=4), "residual")
    assert sorted(feats) == [0, 1] and y.tolist() == ds.tensors[1].tolist()
    for i in (0, 1): np.testing.assert_allclose(feats[i], pool_normalise(outs[i]).numpy(), atol=1e-5)
    with torch.no_grad(): seen = _captured(model, ds.tensors[0])
    hooks = lambda: [len(m._forward_hooks) for m in model.modules()]  # transformers keeps its own recorders
    before = hooks()
    for rep in ("MHA", "FC1", "FC2"):
        X = extract_features(model, DataLoader(ds, bs=4), rep, layer=0)[0]
        np.testing.assert_allclose(X, pool_normalise(seen[0, rep][1]).numpy(), atol=1e-5)
    assert hooks() == before  # the probe's hooks are gone


PLAIN = ["timm_vit_ls", *[pytest.param(k, marks=NEEDS_HF) for k in ("hf_vit", "hf_dinov2", "hf_clip_vision")]]


def attention_from_heads(mha, x):
    "MHA's output rebuilt head by head from `head_weights` and the q/k/v and output biases (LayerScale in O)."
    q, k, v, o = head_weights(mha)
    attn, scale = parts_of(mha)[0][0], parts_of(mha)[1]
    if hasattr(attn, "qkv"): bias, out, dh_scale = attn.qkv.bias, attn.proj, attn.scale
    else:
        bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        out = attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj
        dh_scale = getattr(attn, "scale", None) or attn.scaling
    bq, bk, bv = bias.view(3, q.shape[0], 1, q.shape[1])
    Q, K, V = (torch.einsum("bnd,hed->bhne", x, w) + b for w, b in ((q, bq), (k, bk), (v, bv)))
    P = (Q @ K.mT * dh_scale).softmax(-1)
    ob = out.bias if scale is None else out.bias * scale
    return torch.einsum("bhne,hde->bnd", P @ V, o) + ob


@pytest.mark.parametrize("kind", PLAIN)
def test_bounds_of_plain_softmax_families_hold_and_slice_the_forward_passs_heads(kind):
    model, a, b = small_model(kind), images(8, 5), images(8, 6)
    with torch.no_grad():
        for l in range(n_blocks(model)):
            mha, x = block_components(model, l)["MHA"], torch.randn(2, 17, 16)
            torch.testing.assert_close(attention_from_heads(mha, x), mha(x), rtol=1e-4, atol=1e-5)
    stats = pair_token_stats(model, a, b, batch_size=8)
    bounds = plasticity_bounds(model, r=stats["r_max"], sigma=stats["sigma_min"])
    pairs = measure_plasticity(model, a, b, batch_size=8, progress=False)
    worst = pairs.groupby(["layer", "component"])["ratio"]
    for _, row in bounds[bounds["component"].isin(["MHA", "FC1", "FC2"])].iterrows():
        assert worst.max()[row["layer"], row["component"]] <= row["bound"] * (1 + 1e-6)
    assert mha_bound(block_components(model, 0)["MHA"], stats["r_max"], 17) > 0


@pytest.mark.parametrize("kind", ["timm_eva02", "timm_beit", "timm_beit_shared"])
def test_bounds_refuse_attention_that_is_not_plain_softmax(kind):
    model = small_model(kind)
    what = "rotary position embedding" if "eva" in kind else "relative position bias"
    with pytest.raises(NotPlainSoftmaxError, match=f"{FAMILY[kind]}: its attention adds a {what}"):
        plasticity_bounds(model)
    with pytest.raises(NotPlainSoftmaxError, match="plain softmax attention"):
        mha_bound(block_components(model, 0)["MHA"], 1.0, 17)
    with pytest.raises(NotPlainSoftmaxError, match="position-dependent scores"):
        head_weights(model.blocks[0].attn)


def test_other_architectures_are_refused_naming_the_supported_families():
    post_norm = Eva(use_post_norm=True, **ARCH)
    swin = timm.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1))
    others = [timm.create_model("resnet18"), swin, timm.create_model("vit_relpos_small_patch16_224", depth=1),
              post_norm, nn.Linear(3, 3)]
    if transformers is not None:
        config = transformers.Swinv2Config(depths=[1], num_heads=[1], embed_dim=8)
        others.append(transformers.Swinv2Model(config))
    for model in others:
        names = r"is not a ViT this library can map \(not a timm .*\); supported: timm VisionTransformer \("
        with pytest.raises(TypeError, match=names):
            check_vit(model)
    with pytest.raises(TypeError, match="supported:"):
        measure_plasticity(post_norm, images(2, 0), images(2, 1), progress=False)


@pytest.mark.parametrize("kind", [pytest.param("hf_vit", marks=NEEDS_HF), "timm_beit"])
def test_images_of_another_size_are_refused_before_any_work(kind):
    with pytest.raises(ValueError, match=r"but the model takes \(3, 16, 16\)"):
        big = torch.randn(2, 3, 32, 32)
        measure_plasticity(small_model(kind), big, big.flip(0), progress=False)
