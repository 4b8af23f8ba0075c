"bf16 against fp32 on the shipped tiny ViT: plasticity per (layer, component), the component ranking, finetuning."
import pytest
import torch

from vit_plasticity.data import dataloaders, plasticity_images
from vit_plasticity.finetune import finetune
from vit_plasticity.models import load_vit
from vit_plasticity.plasticity import component_summary, layer_summary, measure_plasticity

TOL = 0.01  # relative, per (layer, component) mean over the pairs; measured here: about 3e-4 at 32 pairs


@pytest.fixture(scope="module")
def summaries():
    model = load_vit("tiny-fmnist")
    src, tgt = plasticity_images("fmnist", 16), plasticity_images("digits", 16)
    return {d: layer_summary(measure_plasticity(model, src, tgt, batch_size=16, progress=False, dtype=d))
            for d in (torch.float32, torch.bfloat16)}


def test_bf16_plasticity_within_one_percent_of_fp32(summaries):
    fp32, bf16 = summaries[torch.float32], summaries[torch.bfloat16]
    assert (fp32[["component", "layer"]].values == bf16[["component", "layer"]].values).all()
    rel = (bf16["mean"] / fp32["mean"] - 1).abs()
    assert len(rel) == 4 * 5 and rel.max() < TOL, rel.max()


def test_bf16_keeps_the_component_ranking(summaries):
    rank = lambda ls: list(component_summary(ls)["median"].sort_values(ascending=False).index)
    assert rank(summaries[torch.bfloat16]) == rank(summaries[torch.float32])


def test_bad_dtype_is_refused_before_any_work():
    model = load_vit("tiny-fmnist")
    with pytest.raises(ValueError, match="dtype=torch.float16: pass .fp32. or torch.float32"):
        measure_plasticity(model, "fmnist", "digits", dtype=torch.float16)  # names are refused later


def test_bf16_finetuning_runs_and_keeps_fp32_weights():
    model = load_vit("tiny-fmnist")
    dls = dataloaders("digits", seed=0, bs=16)
    metrics, hist = finetune(model, dls, dls[2], "MHA", lr=0.01, n_steps=2, warmup_steps=1, eval_period=2, seed=0,
                             precision="bf16")
    assert metrics["status"] == "ok" and metrics["steps_done"] == 2 and 0 <= metrics["test_acc"] <= 1
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="precision='fp16': pass 'fp32'"):
        finetune(model, dls, dls[2], "MHA", n_steps=2, eval_period=2, precision="fp16")
