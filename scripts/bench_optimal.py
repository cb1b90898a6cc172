#!/usr/bin/env python
"""Benchmark the two solvers of the ``optimal`` pairing against each other and a training step.

For each batch size B and sample size D, on a class-structured batch (10 Gaussian clusters,
unit noise around centres 3 apart per coordinate, like a batch of a 10-class dataset), times

  distance     pairwise_distance(z): the (B, B) cost both solvers start from (context)
  exact        exact_assignment(d): device -> host copy + scipy's Hungarian + copy back
  sinkhorn     sinkhorn_assignment(d): the on-device approximate solver (no host sync)

in interleaved rounds (round r times every case once, so drift in machine load hits all
alike), each figure the median over rounds, with CUDA synchronised around every call. It
also records the quality of the approximation: total cost of the sinkhorn and of a random
derangement, each divided by the exact optimum, on the timed batch and on uniform noise.

``--step`` adds the time of one preact_resnet18 training step (forward, backward, SGD) for
scale: at ``--step-batch`` (default 512 on CUDA, 64 on the CPU; the JSON says which).
Not a test: ``python scripts/bench_optimal.py --help``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_mixing import device_name

from mixlab.engine.pairing import exact_assignment, pairwise_distance, sinkhorn_assignment


def batch(kind: str, b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.rand(b, d, generator=g)
    centres = 3.0 * torch.randn(10, d, generator=g)
    return centres[torch.randint(0, 10, (b,), generator=g)] + torch.randn(b, d, generator=g)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def total(cost: np.ndarray, partner: np.ndarray) -> float:
    return float(cost[np.arange(len(partner)), partner].sum())


def random_derangement_cost(cost: np.ndarray, seed: int, draws: int = 20) -> float:
    """Mean total cost of random derangements (a random permutation, fixed points rerolled)."""
    rng = np.random.default_rng(seed)
    b, out = len(cost), []
    while len(out) < draws:
        p = rng.permutation(b)
        if not (p == np.arange(b)).any():
            out.append(total(cost, p))
    return float(np.mean(out))


def quality(d: torch.Tensor, seed: int) -> dict[str, float]:
    cost = d.double().cpu().numpy()
    opt = total(cost, exact_assignment(d).cpu().numpy())
    approx = total(cost, sinkhorn_assignment(d).cpu().numpy())
    rand = random_derangement_cost(cost, seed)
    return {"sinkhorn/exact": approx / opt, "random/exact": rand / opt,
            "gap_closed": (rand - approx) / (rand - opt) if rand > opt else 1.0}


def step_time(device: torch.device, b: int, repeats: int) -> float:
    from mixlab.models import build_model

    model = build_model("preact_resnet18", in_shape=(3, 32, 32), num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(b, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (b,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up: cudnn autotuning, allocations
    return statistics.median(timed(step, device) for _ in range(repeats))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048], help="batch sizes B")
    p.add_argument("--dims", type=int, nargs="+", default=[784, 3072], help="sample sizes D (28*28, 3*32*32)")
    p.add_argument("--metric", choices=["euclidean", "sqeuclidean", "cosine"], default="euclidean")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (median reported)")
    p.add_argument("--step", action="store_true", help="also time a preact_resnet18 training step")
    p.add_argument("--step-batch", type=int, default=None, help="batch of that step (512 on CUDA, 64 on CPU)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_optimal.json")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    started = time.time()
    load_before = os.getloadavg()

    rows = []
    for dim in args.dims:
        for b in args.sizes:
            z = batch("clusters", b, dim, seed=b + dim).to(device)
            d = pairwise_distance(z, args.metric)
            cases = {"distance": lambda z=z: pairwise_distance(z, args.metric),
                     "exact": lambda d=d: exact_assignment(d), "sinkhorn": lambda d=d: sinkhorn_assignment(d)}
            for fn in cases.values():  # warm-up: lazy imports, allocator, kernels
                fn()
            times: dict[str, list[float]] = {k: [] for k in cases}
            for _ in range(args.repeats):
                for name, fn in cases.items():
                    times[name].append(timed(fn, device))
            noise = pairwise_distance(batch("uniform", b, dim, seed=b + dim + 1).to(device), args.metric)
            row = {"B": b, "D": dim, **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()},
                   "quality_clusters": quality(d, seed=b), "quality_uniform": quality(noise, seed=b)}
            rows.append(row)
            print(f"B={b} D={dim}: exact {row['exact_ms']:.1f} ms, sinkhorn {row['sinkhorn_ms']:.1f} ms, "
                  f"sinkhorn/exact cost {row['quality_clusters']['sinkhorn/exact']:.4f}", file=sys.stderr)

    # The solver's fixed cost per call: at B = 8 there is no real work, only the ~1.6k small
    # ops it dispatches (kernel launches on CUDA), whatever B is.
    tiny = pairwise_distance(batch("clusters", 8, 16, seed=0).to(device), args.metric)
    sinkhorn_assignment(tiny)
    floor_ms = statistics.median(timed(lambda: sinkhorn_assignment(tiny), device)
                                 for _ in range(max(args.repeats, 5))) * 1e3

    step = None
    if args.step:
        sb = args.step_batch or (512 if device.type == "cuda" else 64)
        step = {"model": "preact_resnet18", "in_shape": [3, 32, 32], "batch": sb,
                "ms": step_time(device, sb, max(args.repeats, 3)) * 1e3}

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "python": platform.python_version(), "metric": args.metric, "repeats": args.repeats,
        "data": "timed: 10 Gaussian clusters (centres 3*N(0,1), noise N(0,1)); quality also on U[0,1) noise",
        "wall_s": round(time.time() - started, 1),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "sinkhorn_dispatch_floor_ms": floor_ms, "results": rows, "train_step": step,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{report['device_name']} | torch {torch.__version__} | metric {args.metric} | median of {args.repeats}\n")
    print("|    B |    D | distance ms | exact ms | sinkhorn ms | exact/sinkhorn | sinkhorn/exact cost "
          "(clusters, uniform) | random/exact cost (clusters, uniform) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        qc, qu = r["quality_clusters"], r["quality_uniform"]
        print(f"| {r['B']:4d} | {r['D']:4d} | {r['distance_ms']:11.2f} | {r['exact_ms']:8.2f} | {r['sinkhorn_ms']:11.2f} "
              f"| {r['exact_ms'] / r['sinkhorn_ms']:14.2f} | {qc['sinkhorn/exact']:.4f}, {qu['sinkhorn/exact']:.4f} "
              f"| {qc['random/exact']:.3f}, {qu['random/exact']:.3f} |")
    print(f"\nsinkhorn at B=8 (its fixed dispatch/launch cost): {floor_ms:.1f} ms")
    if step:
        print(f"preact_resnet18 training step, batch {step['batch']}: {step['ms']:.1f} ms")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
