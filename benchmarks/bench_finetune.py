"Target 3: a training step of the fastai selective learner against a plain PyTorch loop; LN1-only and MHA-only steps."
from __future__ import annotations
import gc, sys, time

import timm
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import Row, interleaved, median, paired_ratio
from vit_plasticity.components import set_trainable
from vit_plasticity.finetune import selective_learner, warmup_cosine

LR, CLIP, CLASSES = 1e-3, 1.0, 10
_warmup = lambda steps: 1 if steps > 1 else 0  # a warm-up step when the measurement has room for one


def make_model(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)


class TrainTimerCB(Callback):
    "Seconds spent in the training phase of the last fastai epoch (validation excluded)."
    def before_train(self): self.t0 = time.perf_counter()
    def after_train(self): self.seconds = time.perf_counter() - self.t0


def fastai_steps(model: nn.Module, train: str, batch: tuple, steps: int):
    """A callable running `steps` optimiser steps of `selective_learner` (SGD momentum 0.9, clip 1.0, warm-up
    cosine, the callbacks `finetune` uses, without progress bar or logging) on the same batch; returns s/step."""
    timer = TrainTimerCB()
    dls = DataLoaders([batch], [(batch[0][:2], batch[1][:2])])  # the validation pass is not timed
    learn = selective_learner(model, dls, train, lr=LR, n_steps=steps, warmup_steps=_warmup(steps), eval_period=steps,
                              clip=CLIP, cbs=[timer])
    if hasattr(learn, "progress"): learn.remove_cb(learn.progress)
    def run() -> float:
        with learn.no_logging(): learn.fit(1)
        assert learn.opt_step == steps
        return timer.seconds / steps
    return run


def plain_steps(model: nn.Module, train: str, batch: tuple, steps: int):
    """The same steps in plain PyTorch: set the learning rate, forward, cross-entropy, backward, clip the trained
    parameters' gradient to norm 1 (keeping the pre-clip norm and the loss, as the learner logs them), SGD step,
    zero the gradients; returns s/step."""
    set_trainable(model, train)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=0.0)
    xb, yb = batch
    def run() -> float:
        model.train()
        log, t0 = [], time.perf_counter()
        for t in range(1, steps + 1):
            for g in opt.param_groups: g["lr"] = warmup_cosine(t, LR, steps, _warmup(steps))
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            norm = nn.utils.clip_grad_norm_(params, CLIP)
            opt.step(); opt.zero_grad()
            log.append((loss.item(), norm.item()))
        return (time.perf_counter() - t0) / steps
    return run


def target3(cfg: dict, log) -> list[Row]:
    name, bs, img, steps, reps = cfg["model"], cfg["batch"], cfg["img"], cfg["steps"], cfg["reps"]
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(bs, 3, img, img, generator=g), torch.randint(0, CLASSES, (bs,), generator=g))
    kw = {} if img == 224 else dict(img_size=img)
    fns = {"plain full": plain_steps(make_model(name, **kw), "full", batch, steps)}
    for cfg_name in ("full", "LN1", "MHA"):
        fns[f"fastai {cfg_name}"] = fastai_steps(make_model(name, **kw), cfg_name, batch, steps)
    log(f"  target 3: {name} at {img}px, batch {bs}, {steps} steps per measurement, {reps} rounds")
    t = interleaved(fns, reps, warmup=1)
    over = paired_ratio(t["fastai full"], t["plain full"]) - 1
    ln1, mha = paired_ratio(t["fastai LN1"], t["fastai full"]), paired_ratio(t["fastai MHA"], t["fastai full"])
    s = lambda k: f"{median(t[k]):.3f} s"
    rows = [Row("3a finetune: learner overhead vs plain loop", f"{s('fastai full')} vs {s('plain full')} per step "
                f"({cfg['label']})", over, "<= 0.05", over <= 0.05),
            Row("3b finetune: LN1-only step / full step", f"{s('fastai LN1')} vs {s('fastai full')}", ln1, "<= 0.75", ln1 <= 0.75),
            Row("3c finetune: MHA-only step / full step", f"{s('fastai MHA')} vs {s('fastai full')}", mha, "<= 0.85", mha <= 0.85)]
    del fns; gc.collect()
    if cfg.get("tiny"):  # the offline demo's own model: where the per-step overhead weighs most
        tb = cfg["tiny"]
        from vit_plasticity.models import load_vit
        tiny = lambda: load_vit("tiny-fmnist", num_classes=CLASSES)
        x = torch.randn(tb["batch"], tiny().patch_embed.proj.in_channels, 32, 32, generator=g)
        tbatch = (x, torch.randint(0, CLASSES, (tb["batch"],), generator=g))
        log(f"  target 3 (info): tiny-fmnist, batch {tb['batch']}, {tb['steps']} steps per measurement")
        tt = interleaved({"plain": plain_steps(tiny(), "full", tbatch, tb["steps"]),
                          "fastai": fastai_steps(tiny(), "full", tbatch, tb["steps"])}, tb["reps"], warmup=1)
        o = paired_ratio(tt["fastai"], tt["plain"]) - 1
        rows.append(Row("3d finetune: learner overhead, tiny ViT (info)", f"{median(tt['fastai']) * 1e3:.1f} ms vs "
                        f"{median(tt['plain']) * 1e3:.1f} ms per step (demo's model, batch {tb['batch']})", o, "reported", None))
    return rows
