"Finetuning checks too many or too slow for the notebook: every configuration, exact step counts, seeds, clipping."
import copy
import math
import warnings

import pytest
import timm
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from torch.utils.data import TensorDataset

from vit_plasticity.components import COMPONENTS, component_of
from vit_plasticity.finetune import (evaluate, finetune, reset_head, run_history, selective_learner,
                                     warmup_cosine)
from vit_plasticity.models import load_vit


def tiny_vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=4, in_chans=1)


def tiny_task(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 32, 32, generator=g)
    for c in range(4): x[y == c, :, 16 * (c // 2):16 * (c // 2 + 1), 16 * (c % 2):16 * (c % 2 + 1)] += 1.0
    return TensorDataset(x, y)


class CountingLoader:
    "Wrap a loader and count the batches drawn from it."
    def __init__(self, dl): self.dl, self.drawn = dl, 0
    def __len__(self): return len(self.dl)
    def __iter__(self):
        for b in self.dl: self.drawn += 1; yield b


class StopAfterFirstStepCB(Callback):
    order = 100
    def after_step(self): raise CancelFitException()


def tiny_dls(n_train=40, bs=8, shuffle=True):
    train = DataLoader(tiny_task(n_train, seed=1), bs=bs, shuffle=shuffle, drop_last=True)
    return DataLoaders(train, DataLoader(tiny_task(16, seed=2), bs=bs))


TEST_DL = DataLoader(tiny_task(16, seed=3), bs=8)


def fit(learn):
    with learn.no_logging(): learn.fit(learn.step_budget_cb.n_epoch)
    return run_history(learn)


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("train", ["full", *COMPONENTS, ["MHA", "FC1"]])
def test_only_chosen_parameters_change(train):
    torch.manual_seed(0)
    model = tiny_vit()
    before = copy.deepcopy(model.state_dict())
    fit(selective_learner(model, tiny_dls(), train, lr=0.1, n_steps=3, warmup_steps=1, eval_period=3))
    wanted = set(COMPONENTS) if train == "full" else set([train] if isinstance(train, str) else train)
    expected = {n for n, _ in model.named_parameters() if component_of(n)[0] in wanted | {"head"}}
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    assert changed == expected


def test_only_chosen_layers_change():
    torch.manual_seed(0)
    model = tiny_vit()
    before = copy.deepcopy(model.state_dict())
    fit(selective_learner(model, tiny_dls(), "FC2", lr=0.1, n_steps=2, warmup_steps=1, eval_period=2,
                          layers=[1], train_head=False))
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    assert changed == {"blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias"}


@pytest.mark.parametrize("final_eval", [False, True])
@pytest.mark.parametrize("n_steps,eval_period,grad_accum",
                         [(7, 3, 1), (6, 3, 1), (7, 3, 2), (11, 4, 3), (1, 1, 1), (9, 9, 2)])
def test_n_steps_exact(n_steps, eval_period, grad_accum, final_eval):
    "5 training batches per pass: runs are neither whole passes nor whole validation periods."
    dls = tiny_dls()
    counting = CountingLoader(dls.train)
    learn = selective_learner(tiny_vit(), DataLoaders(counting, dls.valid), "LN1", lr=0.01, n_steps=n_steps,
                              warmup_steps=1, eval_period=eval_period, grad_accum=grad_accum,
                              final_eval=final_eval)
    hist = fit(learn)
    assert learn.opt_step == n_steps and hist.step.tolist() == list(range(1, n_steps + 1))
    assert counting.drawn == n_steps * grad_accum  # micro-batches drawn, none wasted
    evals = [t for t in range(1, n_steps + 1) if t % eval_period == 0 or (final_eval and t == n_steps)]
    assert hist.dropna(subset="valid_acc").step.tolist() == evals


def test_a_run_that_is_never_validated_is_refused():
    "eval_period > n_steps: no step is divisible by eval_period, so nothing would be validated or selected."
    with pytest.raises(ValueError, match=r"eval_period=10 > n_steps=5"):
        selective_learner(tiny_vit(), tiny_dls(), "LN1", n_steps=5, eval_period=10)
    with pytest.raises(ValueError, match=r"eval_period=10 > n_steps=5"):
        finetune(tiny_vit(), tiny_dls(), TEST_DL, "LN1", n_steps=5, eval_period=10)
    learn = selective_learner(tiny_vit(), tiny_dls(), "LN1", n_steps=5, eval_period=10, warmup_steps=1,
                              final_eval=True)
    hist = fit(learn)
    assert hist.dropna(subset="valid_acc").step.tolist() == [5]


def test_validation_is_not_cancelled_outside_fit():
    "After a run that ended between validations, learn.validate() still validates."
    learn = selective_learner(tiny_vit(), tiny_dls(), "LN1", n_steps=5, eval_period=3, warmup_steps=1)
    fit(learn)
    assert learn.opt_step == 5 and learn.validate()[1] is not None


def test_best_checkpoint_comes_from_a_validated_step():
    "The steps after the last multiple of eval_period are not validated, so they cannot be selected."
    torch.manual_seed(0)
    model = tiny_vit()
    m, h = finetune(model, tiny_dls(), TEST_DL, "full", lr=0.05, n_steps=7, warmup_steps=1, eval_period=3,
                    seed=0)
    assert m["best_step"] in (3, 6) and h.dropna(subset="valid_acc").step.tolist() == [3, 6]
    assert m["test_acc"] == evaluate(model, TEST_DL)[1]


def test_lr_trace_and_momentum_every_step():
    class SpyCB(Callback):
        order = 100  # after every other callback, right before the optimiser step
        def before_fit(self): self.seen = []
        def before_step(self):
            group = self.opt.opt.param_groups[0]
            self.seen.append((group["lr"], group["momentum"]))
    spy = SpyCB()
    learn = selective_learner(tiny_vit(), tiny_dls(), "MHA", lr=0.3, n_steps=9, warmup_steps=100, eval_period=4,
                              grad_accum=2, cbs=[spy])
    hist = fit(learn)
    warm = 9 // 2  # the warm-up of 100 steps is clamped to half the run
    expected = [warmup_cosine(t, 0.3, 9, warm) for t in range(1, 10)]
    assert [lr for lr, _ in spy.seen] == pytest.approx(expected, abs=1e-12)
    assert hist.lr.tolist() == pytest.approx(expected, abs=1e-12)
    assert [mom for _, mom in spy.seen] == [0.9] * 9 and hist.mom.tolist() == [0.9] * 9
    assert expected[warm - 1] == pytest.approx(0.3) and expected[-1] == pytest.approx(0.0)


def test_warmup_clamp_warns():
    with pytest.warns(UserWarning, match="does not fit a run of 10"):
        selective_learner(tiny_vit(), tiny_dls(), "MHA", n_steps=10, warmup_steps=2000, eval_period=10)


@pytest.mark.parametrize("clip", [0.01, None])
def test_clipping_actually_clips(clip):
    torch.manual_seed(0)
    model = tiny_vit()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    n_steps, warm = 3, 1  # step 1 ends the warm-up: η₁ = peak
    learn = selective_learner(model, tiny_dls(), "full", lr=0.5, n_steps=n_steps, warmup_steps=warm,
                              eval_period=3, clip=clip)
    learn.add_cb(StopAfterFirstStepCB())
    hist = fit(learn)
    assert len(hist) == 1
    step = torch.linalg.vector_norm(torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()]))
    nu = hist.grad_norm[0]
    expected = 0.5 * (min(nu, clip) if clip else nu)
    assert nu > 0.01 and step.item() == pytest.approx(expected, rel=1e-4)


def test_grad_norm_matches_a_copy_on_the_same_batch():
    torch.manual_seed(0)
    model = tiny_vit()
    ref = copy.deepcopy(model)
    dls = tiny_dls(shuffle=False)
    hist = fit(selective_learner(model, dls, "LN2", lr=0.1, n_steps=1, warmup_steps=0, eval_period=1))
    xb, yb = next(iter(dls.train))
    torch.nn.functional.cross_entropy(ref(xb), yb).backward()
    grads = [p.grad for n, p in ref.named_parameters() if component_of(n)[0] in ("LN2", "head")]
    assert hist.grad_norm[0] == pytest.approx(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item(), rel=1e-5)


def test_same_seed_same_run():
    "Same model, same loaders (already iterated once), same seed: the same run, to the last bit."
    torch.manual_seed(0)
    model, dls = tiny_vit(), tiny_dls()
    run = lambda seed: finetune(copy.deepcopy(model), dls, TEST_DL, "MHA", lr=0.05, n_steps=6, warmup_steps=2,
                                eval_period=3, seed=seed)
    (m1, h1), (m2, h2), (_, h3) = run(0), run(0), run(1)
    drop = ("wall_time_s", "images_per_s")
    assert {k: v for k, v in m1.items() if k not in drop} == {k: v for k, v in m2.items() if k not in drop}
    assert h1.equals(h2)
    assert not h1.train_loss.equals(h3.train_loss)  # another seed, another data order


def test_metrics_and_best_checkpoint():
    torch.manual_seed(0)
    model = tiny_vit()
    m, h = finetune(model, tiny_dls(), TEST_DL, ["MHA", "FC1"], lr=0.05, n_steps=8, warmup_steps=2, eval_period=2)
    assert set(m) >= {"status", "n_steps", "steps_done", "best_step", "best_valid_acc", "test_acc", "trainable_params",
                      "wall_time_s", "images_per_s"}
    assert m["status"] == "ok" and m["steps_done"] == 8 and m["train"] == ["MHA", "FC1"]
    valid = h.dropna(subset="valid_acc")
    assert m["best_step"] == valid.step[valid.valid_acc.idxmax()] and m["best_valid_acc"] == valid.valid_acc.max()
    assert m["test_acc"] == evaluate(model, TEST_DL)[1]
    assert m["images_per_s"] > 0 and m["wall_time_s"] > 0
    assert list(h.columns) == ["step", "lr", "mom", "grad_norm", "train_loss", "valid_loss", "valid_acc"]


def test_ties_keep_the_earliest_checkpoint():
    "With lr 0 nothing changes: every validation ties, and the first one is kept (strict improvement)."
    m, h = finetune(tiny_vit(), tiny_dls(), TEST_DL, "MHA", lr=0.0, n_steps=6, warmup_steps=1, eval_period=2)
    assert h.valid_acc.dropna().nunique() == 1 and m["best_step"] == 2


@pytest.mark.parametrize("clip", [None, 1.0])
def test_divergence_is_recorded(clip):
    torch.manual_seed(0)
    lr = 1e6 if clip is None else 1e30  # clipped at 1.0, lr 1e6 gives losses ~1e10 that stay finite
    m, h = finetune(tiny_vit(), tiny_dls(), TEST_DL, "full", lr=lr, n_steps=40, warmup_steps=0, eval_period=5, clip=clip)
    assert m["status"] == "diverged" and m["steps_done"] < 40 and len(h) == m["steps_done"]
    if m["best_step"] is None: assert m["test_acc"] is None
    else: assert math.isfinite(m["test_acc"])


def test_adamw_hyperparameters():
    learn = selective_learner(tiny_vit(), tiny_dls(), "FC2", lr=1e-3, n_steps=2, opt="adamw", warmup_steps=1,
                              eval_period=2)
    hist = fit(learn)
    group = learn.opt.opt.param_groups[0]
    assert type(learn.opt.opt).__name__ == "AdamW" and group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.0
    assert hist.mom.tolist() == [0.9, 0.9]


def test_mixed_precision_needs_a_gpu():
    if torch.cuda.is_available(): pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        selective_learner(tiny_vit(), tiny_dls(), "MHA", mixed_precision="bf16")


def test_reset_head_is_seeded_and_leaves_the_global_generator_alone():
    models = [tiny_vit() for _ in range(3)]  # building models draws from the global RNG; resets must not
    state = torch.get_rng_state()
    heads = [reset_head(m, 7, seed=s).head for m, s in zip(models, (0, 0, 1))]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)
    assert not torch.equal(heads[0].weight, heads[2].weight)
    torch.manual_seed(1)
    ref = torch.nn.Linear(192, 7)  # PyTorch's default init, from seed 1: an independent draw of the same head
    assert torch.equal(heads[2].weight, ref.weight) and torch.equal(heads[2].bias, ref.bias)


def test_the_pretrained_head_is_gone():
    "The tiny ViT's checkpoint has a 10-class Fashion-MNIST head: 10 classes asked still give a new one."
    pretrained = load_vit("tiny-fmnist", num_classes=10)
    old = {k: v.clone() for k, v in pretrained.head.state_dict().items()}
    model = reset_head(pretrained, 10, seed=0)
    assert model.head.weight.shape == old["weight"].shape and model.num_classes == 10
    assert not torch.equal(model.head.weight, old["weight"]) and not torch.equal(model.head.bias, old["bias"])
    torch.manual_seed(0)
    assert torch.equal(model.head.weight, torch.nn.Linear(model.embed_dim, 10).weight)


@pytest.mark.parametrize("new_head", [True, False])
def test_finetune_makes_a_new_head_unless_asked_not_to(new_head):
    "With lr 0 nothing trains: the head left in the model is the one finetune started from."
    model = tiny_vit()
    loaded = model.head.weight.detach().clone()
    finetune(model, tiny_dls(), TEST_DL, "MHA", lr=0.0, n_steps=2, warmup_steps=1, eval_period=2, seed=3,
             new_head=new_head)
    expected = reset_head(tiny_vit(), 4, seed=3).head.weight if new_head else loaded
    assert torch.equal(model.head.weight, expected)
