"Target 4: linear-probe feature extraction against a plain forward pass over the same batches."
from __future__ import annotations
import sys

import timm
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import Row, interleaved, median, paired_ratio
from vit_plasticity.probe import extract_features


def target4(cfg: dict, log) -> list[Row]:
    name, bs, n_batches, reps = cfg["model"], cfg["batch"], cfg["batches"], cfg["reps"]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(bs, 3, 224, 224, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n_batches)]

    @torch.inference_mode()
    def plain():
        for xb, _ in batches: model(xb)

    def extract():  # the probe's path: hook on the last block, mean-pool, L2-normalise, to NumPy
        feats, _ = extract_features(model, batches, "residual", -1)
        assert feats.shape == (bs * n_batches, model.embed_dim)

    log(f"  target 4: {name}, {n_batches} batch(es) of {bs}, {reps} rounds")
    t = interleaved({"plain": plain, "extract": extract}, reps, warmup=1)
    rel = paired_ratio(t["plain"], t["extract"])  # throughput of extraction / throughput of the plain forward
    n = bs * n_batches
    row = Row("4  probe: feature extraction / plain forward", f"{n / median(t['extract']):.2f} vs {n / median(t['plain']):.2f} "
              f"images/s ({cfg['label']})", rel, ">= 0.90", rel >= 0.90)
    return [row]
