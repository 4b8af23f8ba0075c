"""Targets 1 and 2: the plasticity estimator (paper protocol) against a naive oracle; its scaling in pairs and model size.

Run as a script, this file is the peak-memory probe: `python bench_plasticity.py VARIANT MODEL BATCH PAIRS [PAIRS ...]`
prints one JSON line {pairs: MiB} (see `_common.MEM_METHOD`)."""
from __future__ import annotations
import gc, json, sys

import numpy as np
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import Row, interleaved, matmul_rate, median, paired_ratio, peak_since, reset_peak, run_probe
from vit_plasticity.components import block_components, embed
from vit_plasticity.plasticity import measure_plasticity

SHAPES = {"B/16": "vit_base_patch16_224", "L/16": "vit_large_patch16_224", "H/14": "vit_huge_patch14_224"}


# ---------------------------------------------------------------------------------------------------- the oracle
def _fro(t: torch.Tensor) -> torch.Tensor: return torch.linalg.vector_norm(t, dim=(1, 2))


@torch.inference_mode()
def naive_paper(model, a: torch.Tensor, b: torch.Tensor, tidy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's protocol computed directly, as the notebook's reference `_naive_paper` does (its per-pair Python
    loop replaced by a batched norm): the embeddings x, y of both images; then, in every block, every component's
    output materialised for both inputs, FC2 on the zero-padded input [x, 0, 0, 0]; Frobenius distance per pair.
    `tidy` frees each component's inputs and outputs before the next (only changes the peak memory).
    Returns d_in (P,) and d_out (P, L, 5), components in `block_components` order."""
    model.eval()
    x, y = embed(model, a), embed(model, b)  # (P, n, d)
    rows = []
    for l in range(len(model.blocks)):
        row = []
        for name, f in block_components(model, l).items():
            u, v = (x, y) if name != "FC2" else [F.pad(t, (0, f.in_features - t.shape[-1])) for t in (x, y)]
            fu, fv = f(u), f(v)
            row.append(_fro(fu - fv))
            if tidy: del u, v, fu, fv
        rows.append(torch.stack(row, -1))
    return _fro(x - y), torch.stack(rows, 1)


def estimator(model, a, b, batch_size: int):
    "The library's estimator, through its public API, protocol 'paper'."
    return measure_plasticity(model, a, b, "paper", batch_size=batch_size, progress=False)


def max_rel_diff(df, d_in: torch.Tensor, d_out: torch.Tensor) -> float:
    "Largest relative difference between the estimator's table and the oracle's d_in, d_out and ratios."
    P, L, C = d_out.shape
    got = {k: df[k].to_numpy().reshape(P, L, C) for k in ("d_in", "d_out", "ratio")}
    want_out, want_in = d_out.double().numpy(), np.broadcast_to(d_in.double().numpy()[:, None, None], (P, L, C))
    ref = {"d_in": want_in, "d_out": want_out, "ratio": want_out / want_in}
    return max(float(np.max(np.abs(got[k] / ref[k] - 1))) for k in ref)


# ---------------------------------------------------------------------------------------------------- FLOPs
def vit_dims(model) -> dict:
    blk, pe = model.blocks[0], model.patch_embed
    return dict(n=pe.num_patches + model.num_prefix_tokens, d=model.embed_dim, dm=blk.mlp.fc1.out_features,
                L=len(model.blocks), patches=pe.num_patches, k=pe.proj.weight[0].numel())


def flops_per_pair(model, variant: str) -> float:
    """Matmul FLOPs (2 per multiply-add) of one pair under the paper protocol; elementwise work (LayerNorms,
    softmax, differences, norms) is not counted. Per block, multiply-adds per pair:
      estimator: 2 (3nd² + 2n²d)  [qkv and attention, both inputs] + nd² [proj on z_x - z_y]
                 + n d dm [FC1 on x - y] + nd² [FC2's first d columns on x - y]
      naive:     2 (4nd² + 2n²d)  [MHA whole, both inputs] + 2 n d dm [FC1, both] + 2 n dm d [FC2 padded, both]
    plus the patch projection of both images."""
    s = dict(vit_dims(model))
    n, d, dm, L = s["n"], s["d"], s["dm"], s["L"]
    if variant == "estimator": per_block = 2 * (3 * n * d * d + 2 * n * n * d) + n * d * d + n * d * dm + n * d * d
    else: per_block = 2 * (4 * n * d * d + 2 * n * n * d) + 2 * n * d * dm + 2 * n * dm * d
    return 2.0 * (L * per_block + 2 * s["patches"] * s["k"] * d)


# ---------------------------------------------------------------------------------------------------- models
def make_model(shape: str, fast_init: bool = False):
    """A random-weight ViT of the given shape, eval mode. `fast_init` keeps PyTorch's default layer init and skips
    timm's (slow on 600M parameters); the timings do not depend on the values."""
    torch.manual_seed(0)
    kw = dict(weight_init="skip") if fast_init else {}
    return timm.create_model(SHAPES[shape], pretrained=False, **kw).eval()


def images(n: int, seed: int, size: int = 224) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- target 1
def target1(cfg: dict, log) -> tuple[list[Row], dict]:
    P, reps = cfg["pairs"], cfg["reps"]
    model = make_model("B/16")
    a, b = images(P, 1), images(P, 2)
    gemm_sq = matmul_rate(2048, 2048, 2048)
    s = vit_dims(model)
    gemm_vit = matmul_rate(P * s["n"], s["d"], s["dm"])  # FC1's GEMM at this batch: the estimator's typical shape
    out = {}
    fns = {"naive": lambda: out.__setitem__("naive", naive_paper(model, a, b)),
           "estimator": lambda: out.__setitem__("est", estimator(model, a, b, P)),
           "gemm_square": gemm_sq, "gemm_vit": gemm_vit}
    log(f"  target 1: ViT-B/16, {P} pairs per batch, {reps} interleaved rounds")
    t = interleaved(fns, reps, warmup=1)
    err = max_rel_diff(out["est"], *out["naive"])
    speedup = paired_ratio(t["naive"], t["estimator"])
    fl_est, fl_naive = flops_per_pair(model, "estimator") * P, flops_per_pair(model, "naive") * P
    achieved = [fl_est / x / 1e9 for x in t["estimator"]]
    rate_sq = [gemm_sq.flops / x / 1e9 for x in t["gemm_square"]]
    rate_vit = [gemm_vit.flops / x / 1e9 for x in t["gemm_vit"]]
    eff = median([e / r for e, r in zip(achieved, rate_sq)])
    log("  memory probes (fresh processes): naive, naive tidy, estimator")
    mem = {v: run_probe("bench_plasticity.py", v, "B/16", str(P), *map(str, ps))
           for v, ps in [("naive", [P]), ("naive_tidy", [P]), ("estimator", [P, cfg["pairs_max"]])]}
    m_naive, m_tidy, m_est = mem["naive"][str(P)], mem["naive_tidy"][str(P)], mem["estimator"][str(P)]
    rows = [
        Row("1a plasticity: estimator = naive oracle", f"max rel. diff of d_in, d_out, ratio over {P}x12x5", err, "<= 1e-5", err <= 1e-5),
        Row("1b plasticity: speed-up over naive (ViT-B/16)", f"naive {median(t['naive']):.2f} s, estimator {median(t['estimator']):.2f} s "
            f"per {P} pairs; FLOP ratio {fl_naive / fl_est:.2f}", speedup, ">= 1.7", speedup >= 1.7),
        Row("1c plasticity: peak memory estimator/naive", f"{m_est:.0f} MiB vs {m_naive:.0f} MiB "
            f"(naive freeing as it goes: {m_tidy:.0f} MiB, ratio {m_est / m_tidy:.2f})", m_est / m_naive, "<= 0.333", m_est / m_naive <= 1 / 3),
        Row("1d plasticity: GFLOP/s vs fp32 matmul rate", f"{median(achieved):.0f} GFLOP/s of {median(rate_sq):.0f} "
            f"(2048^3 GEMM; {median(rate_vit):.0f} at FC1's shape)", eff, ">= 0.70", eff >= 0.70)]
    extra = dict(t=t, mem=mem, err=err, gflops=median(achieved), rate_sq=median(rate_sq), rate_vit=median(rate_vit),
                 flops_est=fl_est, flops_naive=fl_naive)
    return rows, extra


# ---------------------------------------------------------------------------------------------------- target 2
def target2(cfg: dict, mem: dict, log) -> list[Row]:
    "Time and peak memory against the number of pairs (fixed batch), time against model shape."
    B, ns, reps = cfg["pairs"], cfg["pair_counts"], cfg["reps"]
    model = make_model("B/16")
    a, b = images(max(ns), 3), images(max(ns), 4)
    log(f"  target 2: ViT-B/16, batch {B}, pairs {ns}, {reps} rounds")
    t = interleaved({N: (lambda N=N: estimator(model, a[:N], b[:N], B)) for N in ns}, reps, warmup=0)
    lo, hi = ns[0], ns[-1]
    lin = paired_ratio([x / hi for x in t[hi]], [x / lo for x in t[lo]])
    per_pair = ", ".join(f"{N}: {median(t[N]) / N:.3f}" for N in ns)
    m_lo, m_hi = mem["estimator"][str(lo)], mem["estimator"][str(cfg["pairs_max"])]
    rows = [Row("2a plasticity: time linear in pairs", f"s/pair at N = {per_pair} (batch {B})", lin,
                "0.85 .. 1.15", 0.85 <= lin <= 1.15),
            Row("2b plasticity: peak memory flat in pairs", f"{m_hi:.0f} MiB at N = {cfg['pairs_max']} vs {m_lo:.0f} MiB "
                f"at N = {lo}", m_hi / m_lo, "<= 1.10", m_hi / m_lo <= 1.10)]
    for shape, (p_big, p_base) in cfg["sizes"].items():
        big = make_model(shape, fast_init=True)
        log(f"  target 2: {shape} ({p_big} pairs) against B/16 ({p_base} pairs), {reps} rounds")
        xa, xb = images(p_big, 5), images(p_big, 6)
        ya, yb = a[:p_base], b[:p_base]
        t = interleaved({"big": lambda: estimator(big, xa, xb, p_big), "base": lambda: estimator(model, ya, yb, p_base)},
                        reps, warmup=1)
        f_big, f_base = flops_per_pair(big, "estimator") * p_big, flops_per_pair(model, "estimator") * p_base
        # seconds per FLOP relative to B/16: 1 means the time grows exactly as the model's FLOPs
        rel = paired_ratio([x / f_big for x in t["big"]], [x / f_base for x in t["base"]])
        rows.append(Row(f"2c plasticity: time per FLOP, {shape} vs B/16", f"{median(t['big']) / p_big:.2f} s/pair vs "
                        f"{median(t['base']) / p_base:.2f}; FLOPs/pair x{flops_per_pair(big, 'estimator') / flops_per_pair(model, 'estimator'):.1f}",
                        rel, "0.75 .. 1.33 (s/FLOP)", 0.75 <= rel <= 1.33))
        big = None; gc.collect()  # free this shape before building the next
    return rows


# ---------------------------------------------------------------------------------------------------- memory probe
def _probe(variant: str, shape: str, batch: int, counts: list[int]) -> dict:
    "Peak memory (MiB above the state before the call) of `variant` on `count` pairs, for each count in turn."
    model = make_model(shape)
    a, b = images(max(counts), 1), images(max(counts), 2)
    fn = {"naive": lambda a, b: naive_paper(model, a, b), "naive_tidy": lambda a, b: naive_paper(model, a, b, tidy=True),
          "estimator": lambda a, b: estimator(model, a, b, batch)}[variant]
    fn(a[:counts[0]], b[:counts[0]])  # warm-up at full size: the BLAS's cached work buffers, the thread pool and
    # lazy imports are there before the reset, for every variant alike, and are not counted as its memory
    out = {}
    for N in counts:
        gc.collect()
        base = reset_peak()
        res = fn(a[:N], b[:N])
        out[str(N)] = round(peak_since(base), 1)
        del res
    return out


if __name__ == "__main__":
    variant, shape, batch, *counts = sys.argv[1:]
    print(json.dumps(_probe(variant, shape, int(batch), [int(c) for c in counts])))
