"""Target 9: start-up of the command line (`vitp --help`, `vitp grid status paper`) in fresh processes, and whether
torch is imported; target 10: the CPU data loader's images/s at 224 px with the training transform."""
from __future__ import annotations
import json, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, median

_STATUS = ("import sys, time; t0 = time.perf_counter(); from vit_plasticity.cli import main\n"
           "try: main({args!r})\nexcept SystemExit: pass\n"
           "print('\\n' + __import__('json').dumps(dict(s=time.perf_counter() - t0, torch='torch' in sys.modules)))")


def _cli(args: list[str]) -> dict:
    "Seconds from interpreter start to the end of `vitp ARGS`, in a fresh process; and whether torch got imported."
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _STATUS.format(args=args)], capture_output=True, text=True,
                         timeout=300)
    wall = time.perf_counter() - t0
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), wall=wall)


def target9(cfg: dict, log) -> list[Row]:
    rows = []
    base = median([(lambda t0: (subprocess.run([sys.executable, "-c", "pass"]), time.perf_counter() - t0)[1])(
        time.perf_counter()) for _ in range(cfg["reps"])])
    for args, limit in ((["--help"], 1.0), (["grid", "status", "paper"], 2.0)):
        log(f"  target 9: vitp {' '.join(args)}, {cfg['reps']} fresh processes")
        runs = [_cli(args) for _ in range(cfg["reps"])]
        wall, torch_in = median([r["wall"] for r in runs]), any(r["torch"] for r in runs)
        rows.append(Row(f"9  start-up: vitp {' '.join(args)}", f"{wall:.2f} s wall (bare interpreter {base:.2f} s); "
                        f"torch imported: {'yes' if torch_in else 'no'}", wall / limit, f"<= 1 (of {limit:g} s)",
                        wall <= limit and not torch_in))
    return rows


def target10(cfg: dict, log) -> list[Row]:
    "Images/s of one CPU process applying the 224-px training transform (RandomResizedCrop, flip, normalise)."
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms as T
    tfm = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                     T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    rng = np.random.default_rng(0)
    rows = []
    for side in cfg["sides"]:
        imgs = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(32)]
        log(f"  target 10: training transform on {side}x{side} RGB images, one process")
        torch.stack([tfm(im) for im in imgs[:4]])
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < cfg["seconds"]:
            torch.stack([tfm(im) for im in imgs])
            n += len(imgs)
        rate = n / (time.perf_counter() - t0)
        rows.append(Row(f"10 loader: images/s, one CPU worker, {side} px source", "RandomResizedCrop(224) + flip + "
                        "ToTensor + normalise, batches of 32", rate, "reported", None))
    return rows
