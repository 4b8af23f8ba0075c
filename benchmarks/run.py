"""vit-plasticity performance benchmarks: every figure is a ratio of two things measured in this run, interleaved
and repeated (median), because the machine is shared. Targets: 1-2 the plasticity estimator (agreement with a
naive oracle, speed, memory, scaling), 3 a finetuning step, 4 probe features, 5 papermill's per-run overhead
(fresh and warm kernels), 6 bf16 vs fp32 (matmul rates, estimator speed and agreement), 7 bf16 vs fp32 finetuning
accuracy, 8 the whole process's peak memory, 9 command-line start-up, 10 the CPU loader's images/s at 224 px.

    .venv/bin/python benchmarks/run.py            # the full run (about 10 min on 2 shared cores)
    .venv/bin/python benchmarks/run.py --quick    # a fast check (about 3 min), smaller sizes, fewer rounds
    .venv/bin/python benchmarks/run.py --only 1 3 --markdown

Writes nothing into the repository: grid runs go to a temporary folder, datasets to the library's usual cache.
Results of a full run are recorded in benchmarks/RESULTS.md."""
from __future__ import annotations
import argparse, os, sys, time
from datetime import datetime, timezone


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds: a check that everything runs")
    ap.add_argument("--only", type=int, nargs="+", choices=range(1, 11), metavar="N",
                    help="run only these targets (1..10)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 1),
                    help="BLAS/OpenMP threads per process (default: $OMP_NUM_THREADS, else 1, the project's setting)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return ap.parse_args(argv)


FULL = {1: dict(pairs=16, reps=3, pairs_max=48),
        2: dict(pairs=16, pair_counts=[16, 48], reps=3, sizes={"L/16": (4, 4), "H/14": (2, 4)}),
        3: dict(model="vit_small_patch16_224", img=224, batch=8, steps=2, reps=3, label="ViT-S/16, 224 px, batch 8",
                tiny=dict(batch=64, steps=20, reps=5)),
        4: dict(model="vit_base_patch16_224", batch=8, batches=1, reps=5, label="ViT-B/16, batch 8"),
        5: dict(reps=5, demo=True),
        6: dict(gemm=512, pairs=32, reps=3),
        7: dict(dataset="digits", steps=300, batch=64, lr=0.01, seeds=[0, 1, 2], min_mm_ratio=0.5),
        8: dict(pairs=16), 9: dict(reps=3), 10: dict(sides=[32, 256], seconds=5)}
QUICK = {1: dict(pairs=8, reps=2, pairs_max=16),
         2: dict(pairs=8, pair_counts=[8, 16], reps=2, sizes={"L/16": (1, 2)}),
         3: dict(model="vit_small_patch16_224", img=224, batch=4, steps=1, reps=2, label="ViT-S/16, 224 px, batch 4"),
         4: dict(model="vit_small_patch16_224", batch=8, batches=1, reps=3, label="ViT-S/16, batch 8"),
         5: dict(reps=1, demo=False),
         6: dict(gemm=256, pairs=8, reps=2),
         7: dict(dataset="digits", steps=20, batch=32, lr=0.01, seeds=[0, 1, 2], min_mm_ratio=0.5),
         8: dict(pairs=4), 9: dict(reps=1), 10: dict(sides=[32], seconds=2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads; inherited by probes and papermill kernels
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    torch.set_num_threads(args.threads)
    from _common import MEM_METHOD, loadavg, machine_info, table
    cfg, targets = (QUICK if args.quick else FULL), args.only or list(range(1, 11))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    m = machine_info()
    start, load0, t0 = datetime.now(timezone.utc), loadavg(), time.perf_counter()
    log(f"{start:%Y-%m-%d %H:%M} UTC  {m['cpu']} ({m['isa']}), {m['cores']} cores, {m['ram_gb']} GB; torch {m['torch']} "
        f"({m['blas']}), {m['threads']} thread(s); load average {load0}")
    rows, mem = [], None
    if 1 in targets or 2 in targets:
        import bench_plasticity as bp
        c1 = cfg[1] if 1 in targets else {**cfg[1], "reps": 1}
        r1, extra = bp.target1(c1, log)
        mem = extra["mem"]
        if 1 in targets: rows += r1
        if 2 in targets: rows += bp.target2({**cfg[2], "pairs_max": c1["pairs_max"]}, mem, log)
    if 3 in targets:
        import bench_finetune as bf
        rows += bf.target3(cfg[3], log)
    if 4 in targets:
        import bench_probe as bpr
        rows += bpr.target4(cfg[4], log)
    if 5 in targets:
        import bench_grid as bg
        rows += bg.target5(cfg[5], log)
    if 6 in targets or 7 in targets:
        import bench_precision as bpp
        r6, mm = bpp.target6(cfg[6], log)
        if 6 in targets: rows += r6
        if 7 in targets: rows += bpp.target7(cfg[7], mm, log)
    if 8 in targets:
        import bench_memory as bm
        rows += bm.target8(cfg[8], log)
    if 9 in targets or 10 in targets:
        import bench_startup as bs
        if 9 in targets: rows += bs.target9(cfg[9], log)
        if 10 in targets: rows += bs.target10(cfg[10], log)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nvit-plasticity benchmarks{' (--quick)' if args.quick else ''}, {start:%Y-%m-%d %H:%M} UTC, {minutes:.1f} min")
    print(f"machine: {m['cpu']} ({m['isa']}), {m['cores']} cores, {m['ram_gb']} GB RAM; Python {m['python']}, "
          f"torch {m['torch']} ({m['blas']}), {m['threads']} thread(s) per process")
    print(f"load average (1/5/15 min): {load0} at start, {loadavg()} at end (shared machine)")
    print(f"peak memory: {MEM_METHOD}\n")
    print(table(rows, markdown=args.markdown))
    fails = [r.target for r in rows if r.ok is False]
    print(f"\n{sum(r.ok is True for r in rows)} passed, {len(fails)} short of target" + (f": {', '.join(f.split()[0] for f in fails)}" if fails else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
