"""Targets 6 and 7: bfloat16 against fp32, measured side by side: the machine's matmul rates, the plasticity
estimator's speed and agreement (per layer and component, and the component ranking), finetuning accuracy."""
from __future__ import annotations
import sys, time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import Row, interleaved, median, paired_ratio
from vit_plasticity.plasticity import component_summary, layer_summary, measure_plasticity


def gemm(n: int, dtype: torch.dtype, calls: int = 2):
    "A callable timing `calls` (n, n) @ (n, n) products in `dtype`; returns its own seconds per product."
    A, B = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(calls): torch.mm(A, B)
        return (time.perf_counter() - t0) / calls
    run.flops = 2.0 * n ** 3
    return run


def target6(cfg: dict, log) -> tuple[list[Row], float]:
    "Matmul rates; the estimator in bf16 vs fp32 on the shipped tiny ViT and real benchmark images."
    from vit_plasticity.data import plasticity_images
    from vit_plasticity.models import load_vit
    n = cfg["gemm"]
    log(f"  target 6: {n}^3 GEMM in fp32 and bf16, {cfg['reps']} rounds")
    t = interleaved({"fp32": gemm(n, torch.float32), "bf16": gemm(n, torch.bfloat16)}, cfg["reps"], warmup=1)
    r32, r16 = (2.0 * n ** 3 / median(t[k]) / 1e9 for k in ("fp32", "bf16"))
    mm = paired_ratio(t["fp32"], t["bf16"])  # bf16 rate / fp32 rate
    model, P = load_vit("tiny-fmnist"), cfg["pairs"]
    src, tgt = plasticity_images("fmnist", P), plasticity_images("digits", P)
    out = {}
    run = lambda d: lambda: out.__setitem__(d, measure_plasticity(model, src, tgt, batch_size=P, progress=False,
                                                                  dtype=d))  # d: "fp32" or "bf16"
    log(f"  target 6: estimator fp32 vs bf16, tiny-fmnist, {P} pairs (fmnist vs digits), {cfg['reps']} rounds")
    te = interleaved({"fp32": run("fp32"), "bf16": run("bf16")}, cfg["reps"], warmup=1)
    speed = paired_ratio(te["fp32"], te["bf16"])
    f, b = layer_summary(out["fp32"]), layer_summary(out["bf16"])
    rel = float((b["mean"] / f["mean"] - 1).abs().max())
    rank = lambda ls: list(component_summary(ls)["median"].sort_values(ascending=False).index)
    same = rank(f) == rank(b)
    rows = [Row("6a bf16 matmul rate / fp32", f"{r16:.1f} vs {r32:.1f} GFLOP/s ({n}^3 GEMM)", mm, "reported", None),
            Row("6b plasticity: bf16 estimator speed / fp32", f"{median(te['bf16']):.2f} s vs "
                f"{median(te['fp32']):.2f} s per {P} pairs (tiny-fmnist)", speed, ">= 2", speed >= 2),
            Row("6c plasticity: bf16 vs fp32 per (layer, component)", f"max rel. diff of the {len(f)} per-layer "
                f"means over {P} pairs", rel, "<= 0.01", rel <= 0.01),
            Row("6d plasticity: component ranking bf16 = fp32", " > ".join(rank(b)) + f" (fp32: {' > '.join(rank(f))})",
                float(same), "= 1", same)]
    return rows, mm


def _finetune_acc(precision: str, seed: int, cfg: dict) -> float:
    from vit_plasticity.data import dataloaders
    from vit_plasticity.finetune import finetune
    from vit_plasticity.models import load_vit
    dls = dataloaders(cfg["dataset"], seed=seed, bs=cfg["batch"])
    metrics, _ = finetune(load_vit("tiny-fmnist"), dls, dls[2], "full", lr=cfg["lr"], n_steps=cfg["steps"],
                          warmup_steps=cfg["steps"] // 10, eval_period=cfg["steps"], seed=seed, precision=precision)
    return metrics["test_acc"]


def target7(cfg: dict, mm_ratio: float, log) -> list[Row]:
    "Test accuracy of fp32 and bf16 finetuning of the tiny ViT on the offline benchmark, over seeds."
    import statistics
    label = f"tiny-fmnist full on {cfg['dataset']}, {cfg['steps']} steps, batch {cfg['batch']}, {len(cfg['seeds'])} seeds"
    if mm_ratio < cfg["min_mm_ratio"]:
        return [Row("7  finetune: bf16 - fp32 test accuracy", f"not run: bf16 matmul is {1 / mm_ratio:.0f}x slower "
                    f"than fp32 on this CPU, the bf16 runs would take hours ({label})", None, "within noise", False)]
    acc = {p: [] for p in ("fp32", "bf16")}
    for s in cfg["seeds"]:
        for p in (("fp32", "bf16") if s % 2 == 0 else ("bf16", "fp32")):
            log(f"  target 7: {p}, seed {s}")
            acc[p].append(_finetune_acc(p, s, cfg))
    diff = [b - f for b, f in zip(acc["bf16"], acc["fp32"])]
    noise = statistics.stdev(acc["fp32"]) if len(acc["fp32"]) > 1 else 0.0
    d = statistics.mean(diff)
    return [Row("7  finetune: bf16 - fp32 test accuracy", f"bf16 {acc['bf16']} vs fp32 {acc['fp32']} ({label}); "
                f"fp32 seed std {noise:.3f}", d, "|diff| <= 2 x seed std", abs(d) <= 2 * noise)]
