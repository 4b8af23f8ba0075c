"""Target 8: the whole process's peak resident memory when measuring ViT-B/16's plasticity from a weights file:
the library (`load_vit`: meta device, memory-mapped file, weights assigned; `measure_plasticity`) against the naive
approach (build the model with random weights, read the file into a second copy and copy it over; the direct
computation materialising every component's output for both inputs).

Run as a script, this file is the probe: `python bench_memory.py VARIANT WEIGHTS PAIRS` prints one JSON line
{"maxrss_mib": ...}, the process's peak resident set from start to end: Linux's VmHWM, which starts afresh at
exec. (`getrusage`'s ru_maxrss does not: a child inherits its parent's peak at fork, here the benchmark process's
own ~1.2 GB, and ru_maxrss is reported beside it only as a check.)"""
from __future__ import annotations
import json, resource, shutil, subprocess, sys, tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _probe(variant: str, weights: str, pairs: int) -> tuple[float, float]:
    import torch
    sys.path.insert(0, str(HERE))
    import bench_plasticity as bp  # the same imports in every variant: timm, the library, the oracle
    from vit_plasticity.models import load_vit
    a, b = bp.images(pairs, 1), bp.images(pairs, 2)
    if variant == "naive":
        import timm
        from safetensors.torch import load_file
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
        model.load_state_dict(load_file(weights))  # the file read into a second copy, then copied over
        bp.naive_paper(model.eval(), a, b)
    elif variant == "library":
        model = load_vit("vit_base_patch16_224", weights=weights)
        bp.estimator(model, a, b, pairs)
    hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(hwm.split()[1]) / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(variant: str, weights: Path, pairs: int) -> float:
    out = subprocess.run([sys.executable, str(HERE / "bench_memory.py"), variant, str(weights), str(pairs)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode: raise RuntimeError(f"bench_memory.py {variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mib"]


def target8(cfg: dict, log) -> list:
    import timm, torch
    from safetensors.torch import save_file
    from _common import Row
    tmp = Path(tempfile.mkdtemp(prefix="vitp-bench-mem-"))
    try:
        torch.manual_seed(0)
        m = timm.create_model("vit_base_patch16_224", pretrained=False)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp / "vitb16.safetensors")
        del m
        P = cfg["pairs"]
        log(f"  target 8: whole-process peak RSS, ViT-B/16 from a local file, {P} pairs, fresh processes")
        r = {v: _run(v, tmp / "vitb16.safetensors", P) for v in ("imports", "naive", "library")}
    finally: shutil.rmtree(tmp, ignore_errors=True)
    ratio, net = r["library"] / r["naive"], (r["library"] - r["imports"]) / (r["naive"] - r["imports"])
    return [Row("8  memory: whole-process peak, library / naive", f"{r['library']:.0f} MiB vs {r['naive']:.0f} MiB "
                f"(ViT-B/16, {P} pairs); the imports alone: {r['imports']:.0f} MiB, above them {net:.2f}",
                ratio, "<= 0.333", ratio <= 1 / 3)]


if __name__ == "__main__":
    variant, weights, pairs = sys.argv[1:]
    hwm, ru = _probe(variant, weights, int(pairs))
    print(json.dumps({"maxrss_mib": round(hwm, 1), "ru_maxrss_mib": round(ru, 1)}))
